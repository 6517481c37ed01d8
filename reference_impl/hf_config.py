"""Hugging Face config.json -> ModelConfig: the LLaMA family, OPT, Mixtral, Qwen3-MoE and DeepSeek-V3.

Everything model.py cannot run is a ConfigError naming the field and what is supported, before any
weight is read. Integer fields are checked before arithmetic, so a 0, null or "32" never becomes a
ZeroDivisionError or TypeError deep in the model code.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from reference_impl.errors import ConfigError
from reference_impl.mla import MLAConfig
from reference_impl.model import ARCHS, Llama3RopeScaling, ModelConfig
from reference_impl.moe import MoEConfig


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
    if model_type in ("mixtral", "qwen3_moe"):
        return _moe_config(cfg, model_type)
    if model_type == "deepseek_v3":
        return _deepseek_config(cfg)
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


# ---- mixture of experts ----------------------------------------------------------------------------


def _moe_config(cfg: dict[str, Any], model_type: str) -> ModelConfig:
    """Mixtral (MixtralForCausalLM) or Qwen3-MoE (Qwen3MoeForCausalLM): LLaMA attention and routed experts."""
    if cfg.get("sliding_window") is not None or cfg.get("use_sliding_window", False):
        raise ConfigError(
            f"{model_type}: sliding-window attention is not supported (sliding_window must be null)"
        )
    if bool(cfg.get("attention_bias", False)):
        raise ConfigError(f"{model_type}: attention_bias=true is not supported")
    llama = _llama_config(cfg)
    layers = llama.num_layers
    if model_type == "mixtral":  # every layer MoE; intermediate_size is each expert's width
        experts = _positive_int(cfg, "num_local_experts")
        moe = MoEConfig(
            experts, _positive_int(cfg, "num_experts_per_tok"), _positive_int(cfg, "intermediate_size")
        )
        return _replace(llama, arch="mixtral", moe=moe)
    experts = _positive_int(cfg, "num_experts" if "num_experts" in cfg else "num_local_experts")
    step = _positive_int(cfg, "decoder_sparse_step", default=1)
    only = cfg.get("mlp_only_layers") or []
    if not isinstance(only, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in only):
        raise ConfigError(f"config.json 'mlp_only_layers' must be a list of layer indices, got {only!r}")
    if any(not 0 <= i < layers for i in only):
        raise ConfigError(f"config.json 'mlp_only_layers' {only} names layers outside 0..{layers - 1}")
    dense = tuple(i for i in range(layers) if i in only or (i + 1) % step)  # HF Qwen3MoeDecoderLayer's rule
    moe = MoEConfig(
        experts,
        _positive_int(cfg, "num_experts_per_tok"),
        _positive_int(cfg, "moe_intermediate_size"),
        norm_topk_prob=_flag(cfg, "norm_topk_prob", False),
        round_weights=True,
        dense_layers=dense,
    )
    return _replace(llama, arch="qwen3_moe", moe=moe, qk_norm=True)


def _deepseek_config(cfg: dict[str, Any]) -> ModelConfig:
    """DeepSeek-V3 (DeepseekV3ForCausalLM): latent attention; first_k_dense_replace dense layers, then
    routed + shared experts with group-limited sigmoid routing. Plain RoPE only (no YaRN), unquantized."""
    for key, supported in (("scoring_func", "sigmoid"), ("topk_method", "noaux_tc"), ("hidden_act", "silu")):
        if cfg.get(key, supported) != supported:
            raise ConfigError(f"deepseek_v3: {key} {cfg[key]!r} is not supported; supported: {supported}")
    if cfg.get("quantization_config"):
        raise ConfigError("deepseek_v3: quantized checkpoints (quantization_config) are not supported")
    if _flag(cfg, "attention_bias", False):
        raise ConfigError("deepseek_v3: attention_bias=true is not supported")
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rope_type = params.get("rope_type", params.get("type", "default")) if isinstance(params, dict) else params
    if rope_type != "default":
        raise ConfigError(f"deepseek_v3: unsupported rope_type {rope_type!r}; supported: default (no YaRN)")
    theta, _ = _rope_params(cfg)
    layers = _positive_int(cfg, "num_hidden_layers")
    dense = _count(cfg, "first_k_dense_replace")
    if dense > layers:
        raise ConfigError(f"config.json 'first_k_dense_replace' {dense} exceeds num_hidden_layers {layers}")
    mla = MLAConfig(
        None if cfg.get("q_lora_rank") is None else _positive_int(cfg, "q_lora_rank"),
        _positive_int(cfg, "kv_lora_rank"),
        _positive_int(cfg, "qk_nope_head_dim"),
        _positive_int(cfg, "qk_rope_head_dim"),
        _positive_int(cfg, "v_head_dim"),
        rope_interleave=_flag(cfg, "rope_interleave", True),
    )
    moe = MoEConfig(
        _positive_int(cfg, "n_routed_experts"),
        _positive_int(cfg, "num_experts_per_tok"),
        _positive_int(cfg, "moe_intermediate_size"),
        "sigmoid",
        norm_topk_prob=_flag(cfg, "norm_topk_prob", True),
        dense_layers=tuple(range(dense)),
        num_shared_experts=_count(cfg, "n_shared_experts"),
        n_group=_positive_int(cfg, "n_group"),
        topk_group=_positive_int(cfg, "topk_group"),
        routed_scaling_factor=_positive_float(cfg.get("routed_scaling_factor"), "routed_scaling_factor"),
        score_bias=True,  # e_score_correction_bias, in every DeepSeek-V3 checkpoint
    )
    return ModelConfig(
        arch="deepseek_v3",
        vocab_size=_positive_int(cfg, "vocab_size"),
        hidden_size=_positive_int(cfg, "hidden_size"),
        intermediate_size=_positive_int(cfg, "intermediate_size"),
        num_layers=layers,
        num_heads=_positive_int(cfg, "num_attention_heads"),
        num_kv_heads=1,  # the cache holds one latent "head" (mla.py)
        head_dim=mla.cache_width,
        max_position=_positive_int(cfg, "max_position_embeddings", default=2048),
        norm_eps=_positive_float(cfg.get("rms_norm_eps", 1e-6), "rms_norm_eps"),
        rope_theta=theta,
        tie_embeddings=_flag(cfg, "tie_word_embeddings", False),
        moe=moe,
        mla=mla,
    )


def _count(cfg: dict[str, Any], key: str) -> int:
    """config.json's `key` as an integer >= 0 (required)."""
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"config.json {key!r} must be an integer >= 0, got {value!r}")
    return value


def _flag(cfg: dict[str, Any], key: str, default: bool) -> bool:
    """config.json's boolean `key` (ConfigError for anything but true / false)."""
    value = cfg.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"config.json {key!r} must be true or false, got {value!r}")
    return value


def _replace(config: ModelConfig, **changes: Any) -> ModelConfig:
    """`config` with `changes` (validated again by ModelConfig)."""
    return dataclasses.replace(config, **changes)
