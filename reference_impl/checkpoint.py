"""Hugging Face checkpoints: safetensors weights into a DecoderModel (config.json: hf_config.py).

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

import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from torch import nn

from reference_impl.errors import ConfigError
from reference_impl.hf_config import config_from_hf, read_config, read_json_object
from reference_impl.model import DecoderModel, ModelConfig
from reference_impl.parallel import shard_range

__all__ = ["config_from_hf", "hf_param_name", "load_model", "read_config", "read_json_object"]

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
# MoE layers: {j} is the expert. Mixtral keeps its experts under block_sparse_moe (w1 gate, w3 up, w2 down);
# Qwen3-MoE under mlp, with the dense MLP names for its mlp_only_layers and RMSNorms on q and k;
# DeepSeek-V3 adds shared experts, the router's selection bias and the latent attention projections.
_HF_NAMES["mixtral"] = _HF_NAMES["llama"] | {
    "mlp.router": "model.layers.{i}.block_sparse_moe.gate",
    "mlp.experts.{j}.w_gate": "model.layers.{i}.block_sparse_moe.experts.{j}.w1",
    "mlp.experts.{j}.w_up": "model.layers.{i}.block_sparse_moe.experts.{j}.w3",
    "mlp.experts.{j}.w_down": "model.layers.{i}.block_sparse_moe.experts.{j}.w2",
}
_HF_NAMES["deepseek_v3"] = _HF_NAMES["llama"] | {
    "attn.q_a": "model.layers.{i}.self_attn.q_a_proj",  # attn.wq (no q LoRA) is q_proj, as in llama
    "attn.q_a_norm": "model.layers.{i}.self_attn.q_a_layernorm",
    "attn.q_b": "model.layers.{i}.self_attn.q_b_proj",
    "attn.kv_a": "model.layers.{i}.self_attn.kv_a_proj_with_mqa",
    "attn.kv_a_norm": "model.layers.{i}.self_attn.kv_a_layernorm",
    "attn.kv_b": "model.layers.{i}.self_attn.kv_b_proj",
    "mlp.router": "model.layers.{i}.mlp.gate",
    "mlp.router.score_bias": "model.layers.{i}.mlp.gate.e_score_correction_bias",
    "mlp.experts.{j}.w_gate": "model.layers.{i}.mlp.experts.{j}.gate_proj",
    "mlp.experts.{j}.w_up": "model.layers.{i}.mlp.experts.{j}.up_proj",
    "mlp.experts.{j}.w_down": "model.layers.{i}.mlp.experts.{j}.down_proj",
    "mlp.shared.w_gate": "model.layers.{i}.mlp.shared_experts.gate_proj",
    "mlp.shared.w_up": "model.layers.{i}.mlp.shared_experts.up_proj",
    "mlp.shared.w_down": "model.layers.{i}.mlp.shared_experts.down_proj",
}
_HF_NAMES["qwen3_moe"] = _HF_NAMES["llama"] | {
    "attn.q_norm": "model.layers.{i}.self_attn.q_norm",
    "attn.k_norm": "model.layers.{i}.self_attn.k_norm",
    "mlp.router": "model.layers.{i}.mlp.gate",
    "mlp.experts.{j}.w_gate": "model.layers.{i}.mlp.experts.{j}.gate_proj",
    "mlp.experts.{j}.w_up": "model.layers.{i}.mlp.experts.{j}.up_proj",
    "mlp.experts.{j}.w_down": "model.layers.{i}.mlp.experts.{j}.down_proj",
}


def hf_param_name(arch: str, name: str) -> str:
    """Our parameter name ('layers.3.attn.wq.weight') -> its HF name ('model.layers.3.self_attn.q_proj.weight');
    expert j of a MoE layer: 'layers.3.mlp.experts.5.w_gate.weight' -> '...experts.5.w1.weight' (Mixtral)."""
    names = _HF_NAMES[arch]
    if name in names:  # top-level tables: embed, pos_embed, lm_head; whole names such as a router's bias
        return names[name]
    m = re.fullmatch(r"layers\.(\d+)\.(.+)\.(\w+)", name) or re.fullmatch(r"()(.+)\.(\w+)", name)
    expert = re.search(r"experts\.(\d+)\.", name)
    module = m and re.sub(r"experts\.\d+\.", "experts.{j}.", m.group(2))
    if m is None or (module not in names and f"{module}.{m.group(3)}" not in names):
        raise KeyError(f"no Hugging Face name for parameter {name!r}")
    layer, leaf, j = m.group(1), m.group(3), expert and expert.group(1)
    if f"{module}.{leaf}" in names:  # a leaf HF names differently (DeepSeek's e_score_correction_bias)
        return names[f"{module}.{leaf}"].format(i=layer, j=j)
    return f"{names[module].format(i=layer, j=j)}.{leaf}"


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


def _check_expert_count(weight_map: dict[str, str], config: ModelConfig, folder: Path) -> None:
    """ConfigError when the checkpoint holds more experts per layer than config.json names (a mismatched
    config would otherwise leave those experts silently unused)."""
    if config.moe is None:
        return
    found = [int(m.group(1)) for name in weight_map if (m := re.search(r"\.experts\.(\d+)\.", name))]
    if found and max(found) >= config.moe.num_experts:
        raise ConfigError(
            f"{folder}: the checkpoint holds experts 0..{max(found)} per layer, config.json names "
            f"{config.moe.num_experts}"
        )


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
        _check_expert_count(ckpt.weight_map, config, folder)
        for name, param in model.named_parameters():
            dim = dims.get(name)
            full = list(param.shape)
            if dim is not None:
                full[dim] *= tp_size
            param.copy_(ckpt.read(hf_param_name(config.arch, name), tuple(full), dim, tp_rank, tp_size))
    return model.eval()
