"""Hugging Face checkpoints: config.json into a ModelConfig, safetensors weights into a DecoderModel.

A checkpoint is a folder with config.json and either model.safetensors or a sharded
model.safetensors.index.json. Weights keep HF's layout (including the rotate-half RoPE convention HF's
conversion scripts produce); `hf_param_name` maps each of our parameters to its HF tensor, and a
tensor-parallel rank reads only its own shard of each tensor.
"""

from __future__ import annotations

import json
import re
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from torch import nn

from reference_impl.errors import ConfigError
from reference_impl.model import ARCHS, DecoderModel, Llama3RopeScaling, ModelConfig
from reference_impl.parallel import shard_range

# ---- config.json ---------------------------------------------------------------------------------


def read_config(path: str | Path) -> ModelConfig:
    """ModelConfig of the HF checkpoint folder `path` (ConfigError if missing or unsupported)."""
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"model folder {folder} does not exist")
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise ConfigError(f"{folder}: no config.json")
    return config_from_hf(read_json_object(cfg_file))


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in the file `path` (ConfigError if it is not valid JSON or not an object)."""
    try:
        obj = json.loads(path.read_text())
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return obj


def config_from_hf(cfg: dict[str, Any]) -> ModelConfig:
    """ModelConfig of a Hugging Face config.json dict; ConfigError on anything model.py cannot run."""
    model_type = cfg.get("model_type")
    if model_type == "llama":
        return _llama_config(cfg)
    if model_type == "opt":
        return _opt_config(cfg)
    raise ConfigError(f"unsupported model_type {model_type!r} in config.json; supported: {', '.join(ARCHS)}")


def _positive_int(cfg: dict[str, Any], key: str, default: int | None = None) -> int:
    """config.json's `key` as an integer >= 1; `default` when absent or null (None: the key is required).

    Checked before any arithmetic, so a 0, null or "32" gives a ConfigError instead of a
    ZeroDivisionError or TypeError deep in the model code.
    """
    value = cfg.get(key)
    if value is None and default is not None:
        return default
    if key not in cfg:
        raise ConfigError(f"config.json has no {key!r}")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"config.json {key!r} must be an integer >= 1, got {value!r}")
    return value


def _positive_float(value: Any, key: str) -> float:
    """A number > 0 read from config.json (ints allowed, e.g. rope_theta 500000)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"config.json {key!r} must be a number > 0, got {value!r}")
    return float(value)


def _rope_params(cfg: dict[str, Any]) -> tuple[float, Llama3RopeScaling | None]:
    # transformers 5 writes "rope_parameters" (theta inside); older files write "rope_theta" + "rope_scaling"
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"config.json rope_parameters/rope_scaling must be an object, got {params!r}")
    theta = _positive_float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)), "rope_theta")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError("partial_rotary_factor != 1 is not supported; RoPE must cover the whole head")
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise ConfigError(f"unsupported rope_type {rope_type!r}; supported: default, llama3")
    try:
        scaling = Llama3RopeScaling(
            factor=_positive_float(params["factor"], "factor"),
            low_freq_factor=_positive_float(params["low_freq_factor"], "low_freq_factor"),
            high_freq_factor=_positive_float(params["high_freq_factor"], "high_freq_factor"),
            original_max_position=_positive_int(params, "original_max_position_embeddings"),
        )
    except KeyError as e:
        raise ConfigError(f"llama3 rope scaling in config.json lacks {e.args[0]!r}") from None
    if scaling.high_freq_factor <= scaling.low_freq_factor:
        raise ConfigError(f"llama3 rope scaling needs high_freq_factor > low_freq_factor, got {scaling}")
    return theta, scaling


def _llama_config(cfg: dict[str, Any]) -> ModelConfig:
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"unsupported hidden_act {cfg['hidden_act']!r} for llama; supported: silu")
    attention_bias, mlp_bias = bool(cfg.get("attention_bias", False)), bool(cfg.get("mlp_bias", False))
    if attention_bias != mlp_bias:
        raise ConfigError("attention_bias and mlp_bias must be equal (both biased or neither)")
    hidden, num_heads = _positive_int(cfg, "hidden_size"), _positive_int(cfg, "num_attention_heads")
    theta, scaling = _rope_params(cfg)
    return ModelConfig(
        arch="llama",
        vocab_size=_positive_int(cfg, "vocab_size"),
        hidden_size=hidden,
        intermediate_size=_positive_int(cfg, "intermediate_size"),
        num_layers=_positive_int(cfg, "num_hidden_layers"),
        num_heads=num_heads,
        num_kv_heads=_positive_int(cfg, "num_key_value_heads", default=num_heads),
        head_dim=_positive_int(cfg, "head_dim", default=hidden // num_heads),
        max_position=_positive_int(cfg, "max_position_embeddings", default=2048),
        norm_eps=_positive_float(cfg.get("rms_norm_eps", 1e-6), "rms_norm_eps"),
        rope_theta=theta,
        rope_scaling=scaling,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        bias=attention_bias,
    )


def _opt_config(cfg: dict[str, Any]) -> ModelConfig:
    hidden, num_heads = _positive_int(cfg, "hidden_size"), _positive_int(cfg, "num_attention_heads")
    if cfg.get("word_embed_proj_dim", hidden) != hidden:
        raise ConfigError(
            f"OPT word_embed_proj_dim {cfg['word_embed_proj_dim']} != hidden_size {hidden} "
            "(project_in/out models such as opt-350m are not supported)"
        )
    if not cfg.get("do_layer_norm_before", True) or cfg.get("_remove_final_layer_norm", False):
        raise ConfigError("only pre-LN OPT (do_layer_norm_before=true, with a final layer norm) is supported")
    if not cfg.get("layer_norm_elementwise_affine", True):
        raise ConfigError("OPT layer_norm_elementwise_affine=false is not supported")
    if cfg.get("activation_function", "relu") != "relu":
        raise ConfigError(
            f"unsupported OPT activation_function {cfg['activation_function']!r}; supported: relu"
        )
    if hidden % num_heads != 0:
        raise ConfigError(f"OPT hidden_size {hidden} is not a multiple of num_attention_heads {num_heads}")
    return ModelConfig(
        arch="opt",
        vocab_size=_positive_int(cfg, "vocab_size"),
        hidden_size=hidden,
        intermediate_size=_positive_int(cfg, "ffn_dim"),
        num_layers=_positive_int(cfg, "num_hidden_layers"),
        num_heads=num_heads,
        num_kv_heads=num_heads,
        head_dim=hidden // num_heads,
        max_position=_positive_int(cfg, "max_position_embeddings", default=2048),
        norm_eps=1e-5,  # HF OPT uses nn.LayerNorm's default eps; config.json does not carry it
        tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        bias=bool(cfg.get("enable_bias", True)),
    )


# ---- safetensors ---------------------------------------------------------------------------------
# Our parameter (module path, with {i} for the layer) -> Hugging Face tensor name, per architecture.
_HF_NAMES: dict[str, dict[str, str]] = {
    "llama": {
        "embed": "model.embed_tokens.weight",
        "lm_head": "lm_head.weight",
        "norm": "model.norm",
        "attn_norm": "model.layers.{i}.input_layernorm",
        "attn.wq": "model.layers.{i}.self_attn.q_proj",
        "attn.wk": "model.layers.{i}.self_attn.k_proj",
        "attn.wv": "model.layers.{i}.self_attn.v_proj",
        "attn.wo": "model.layers.{i}.self_attn.o_proj",
        "mlp_norm": "model.layers.{i}.post_attention_layernorm",
        "mlp.w_gate": "model.layers.{i}.mlp.gate_proj",
        "mlp.w_up": "model.layers.{i}.mlp.up_proj",
        "mlp.w_down": "model.layers.{i}.mlp.down_proj",
    },
    "opt": {
        "embed": "model.decoder.embed_tokens.weight",
        "pos_embed": "model.decoder.embed_positions.weight",
        "lm_head": "lm_head.weight",
        "norm": "model.decoder.final_layer_norm",
        "attn_norm": "model.decoder.layers.{i}.self_attn_layer_norm",
        "attn.wq": "model.decoder.layers.{i}.self_attn.q_proj",
        "attn.wk": "model.decoder.layers.{i}.self_attn.k_proj",
        "attn.wv": "model.decoder.layers.{i}.self_attn.v_proj",
        "attn.wo": "model.decoder.layers.{i}.self_attn.out_proj",
        "mlp_norm": "model.decoder.layers.{i}.final_layer_norm",
        "mlp.fc1": "model.decoder.layers.{i}.fc1",
        "mlp.fc2": "model.decoder.layers.{i}.fc2",
    },
}


def hf_param_name(arch: str, name: str) -> str:
    """Our parameter name ('layers.3.attn.wq.weight') -> its HF name ('model.layers.3.self_attn.q_proj.weight')."""
    names = _HF_NAMES[arch]
    if name in names:  # top-level tables: embed, pos_embed, lm_head
        return names[name]
    m = re.fullmatch(r"layers\.(\d+)\.(.+)\.(weight|bias)", name) or re.fullmatch(
        r"()(.+)\.(weight|bias)", name
    )
    if m is None or m.group(2) not in names:
        raise KeyError(f"no Hugging Face name for parameter {name!r}")
    layer, module, leaf = m.groups()
    return f"{names[module].format(i=layer)}.{leaf}"


class _Checkpoint:
    """Reads (slices of) tensors from a safetensors checkpoint: one file, or several via the index."""

    def __init__(self, folder: Path, stack: ExitStack) -> None:
        self.folder, self._stack, self._handles = folder, stack, {}
        index, single = folder / "model.safetensors.index.json", folder / "model.safetensors"
        if single.is_file():
            self.weight_map = dict.fromkeys(self._open(single.name).keys(), single.name)
        elif index.is_file():
            try:
                self.weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as e:
                raise ConfigError(f"{index}: not a safetensors index with a weight_map ({e})") from None
        else:
            raise ConfigError(
                f"{folder}: no model.safetensors or model.safetensors.index.json (only safetensors)"
            )

    def _open(self, file: str):
        if file not in self._handles:
            path = self.folder / file
            try:
                self._handles[file] = self._stack.enter_context(
                    safe_open(str(path), framework="pt", device="cpu")
                )
            except (SafetensorError, OSError, ValueError, RuntimeError) as e:
                raise ConfigError(f"{path}: cannot read safetensors file ({e})") from None
        return self._handles[file]

    def read(
        self, name: str, shape: tuple[int, ...], shard_dim: int | None, rank: int, size: int
    ) -> torch.Tensor:
        """This rank's part of tensor `name`, whose full shape must be `shape`."""
        if name not in self.weight_map and name.removeprefix("model.") in self.weight_map:
            name = name.removeprefix("model.")  # original OPT checkpoints (facebook/opt-*) lack the prefix
        if name not in self.weight_map:
            raise ConfigError(f"{self.folder}: checkpoint has no tensor {name!r}")
        file = self.weight_map[name]
        try:
            sl = self._open(file).get_slice(name)
            found = tuple(sl.get_shape())
            if found != shape:
                raise ConfigError(
                    f"{self.folder / file}: tensor {name!r} has shape {found}, config implies {shape}"
                )
            if shard_dim is None:
                return sl[:]
            start, stop = shard_range(shape[shard_dim], rank, size)
            return sl[start:stop] if shard_dim == 0 else sl[:, start:stop]
        except SafetensorError as e:
            raise ConfigError(f"{self.folder / file}: cannot read tensor {name!r} ({e})") from None


def _shard_dims(model: nn.Module) -> dict[str, int | None]:
    """Parameter name -> dim of the full tensor split across TP ranks (absent/None: replicated)."""
    return {
        f"{mod_name}.{p}": dim
        for mod_name, mod in model.named_modules()
        for p, dim in getattr(mod, "shard_dims", {}).items()
    }


@torch.no_grad()
def load_model(
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    tp_rank: int = 0,
    tp_size: int = 1,
    group: dist.ProcessGroup | None = None,
) -> DecoderModel:
    """Load a HF checkpoint folder (config.json + model.safetensors or a sharded index), reading only
    this rank's shard of each tensor. ConfigError on any unusable checkpoint."""
    folder = Path(path)
    config = read_config(folder)
    model = DecoderModel(config, tp_rank, tp_size, group, device=device, dtype=dtype)
    dims = _shard_dims(model)
    with ExitStack() as stack:
        ckpt = _Checkpoint(folder, stack)
        for name, param in model.named_parameters():
            dim = dims.get(name)
            full = list(param.shape)
            if dim is not None:
                full[dim] *= tp_size
            param.copy_(ckpt.read(hf_param_name(config.arch, name), tuple(full), dim, tp_rank, tp_size))
    return model.eval()
