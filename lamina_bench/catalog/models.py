"""Model catalog: exact published configs and the sizes derived from them.

Every entry copies the Hugging Face `config.json` of the named repository (its id is in `source`); the
derived quantities are pure functions of a `ModelSpec` and a dtype, with the formula's origin in the
docstring. Sizes are exact integers (bytes, parameters); flops are floats. Mixture-of-experts models
(`MoEModelSpec`: fields and sizes in catalog.moe, entries in catalog.moe_models) are in the catalog too;
the functions here give their exact sizes, or refuse where a dense-only quantity has no single value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lamina_bench.catalog import moe
from lamina_bench.catalog.dtypes import DTYPE_BYTES as DTYPE_BYTES  # re-exported: callers import it here
from lamina_bench.catalog.dtypes import dtype_bytes
from lamina_bench.catalog.moe import MLASpec, MoESpec
from lamina_bench.catalog.moe_models import MOE_MODELS
from lamina_bench.errors import UserInputError

_FAMILIES = ("llama", "opt", "qwen2", *moe.MOE_FAMILIES)  # the MoE families: MoEModelSpec only
_MLPS = ("swiglu", "relu")
# OPT's learned position table has 2 extra rows (padding offset), HF OPTLearnedPositionalEmbedding.
OPT_POSITION_OFFSET = 2
_INT_FIELDS = (
    "num_layers",
    "hidden_size",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "intermediate_size",
    "vocab_size",
    "max_position",
)


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer's shape, as in its HF config.json."""

    name: str  # lower-case slug, e.g. "llama3-70b"
    family: str  # "llama" | "opt" | "qwen2"
    num_layers: int
    hidden_size: int  # d
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int  # FFN inner size
    vocab_size: int
    max_position: int  # context the model was trained for (OPT: without the +2 offset)
    mlp: str  # "swiglu" (gate, up, down; no bias) | "relu" (fc1, fc2; biased)
    tie_embeddings: bool  # lm_head shares the token-embedding matrix
    qkv_bias: bool  # OPT (all linears biased), Qwen2 (q, k, v biased)
    source: str  # HF config.json repo id (or paper table) the numbers come from

    # MoEModelSpec adds these as fields; a dense model reads None / False. Class attributes, not fields:
    # dataclasses.asdict of a dense model and the stored profiles keep their keys.
    moe = None  # catalog.moe.MoESpec: routed experts
    mla = None  # catalog.moe.MLASpec: multi-head latent attention
    qk_norm = False  # RMSNorm on each q and k head (Qwen3)

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.lower():
            raise UserInputError(f"model name {self.name!r} must be a non-empty lower-case slug")
        if self.family not in _FAMILIES:
            raise UserInputError(f"model {self.name}: family {self.family!r}; valid: {', '.join(_FAMILIES)}")
        if (self.family in moe.MOE_FAMILIES) != (self.moe is not None):
            raise UserInputError(
                f"model {self.name}: family {self.family!r}: {', '.join(moe.MOE_FAMILIES)} are the "
                "mixture-of-experts families, and only they have experts (MoEModelSpec)"
            )
        if self.mlp not in _MLPS:
            raise UserInputError(f"model {self.name}: mlp {self.mlp!r}; valid: {', '.join(_MLPS)}")
        for field in _INT_FIELDS:
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UserInputError(f"model {self.name}: {field} must be a positive int, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise UserInputError(
                f"model {self.name}: num_heads {self.num_heads} is not a multiple of "
                f"num_kv_heads {self.num_kv_heads}"
            )

    @property
    def group_size(self) -> int:
        """G: query heads per KV head (1 = multi-head attention, >1 = grouped-query attention)."""
        return self.num_heads // self.num_kv_heads

    @property
    def q_size(self) -> int:
        """Width of q and of the attention output (num_heads * head_dim; equals d in every catalog model)."""
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Width of k and of v (num_kv_heads * head_dim = d / G)."""
        return self.num_kv_heads * self.head_dim


@dataclass(frozen=True)
class MoEModelSpec(ModelSpec):
    """A ModelSpec whose FFN is routed experts (`moe`), optionally with latent attention (`mla`).

    ModelSpec's fields keep their meaning: intermediate_size is the dense FFN width of `moe.dense_layers`;
    with MLA, num_kv_heads = num_heads (as in the config) and head_dim = qk_nope + qk_rope (q/k width).
    """

    moe: MoESpec = None  # required (checked); the default only follows ModelSpec's class attribute
    mla: MLASpec | None = None
    qk_norm: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        moe.check_moe_model(self)


def _llama(name: str, source: str, **shape: int) -> ModelSpec:
    """A LLaMA-architecture model: RMSNorm, RoPE, SwiGLU, no biases, untied lm_head."""
    head_dim = shape["hidden_size"] // shape["num_heads"]
    return ModelSpec(
        name, "llama", **shape, head_dim=head_dim, mlp="swiglu", tie_embeddings=False, qkv_bias=False,
        source=source,
    )  # fmt: skip


def _opt(name: str, source: str, **shape: int) -> ModelSpec:
    """An OPT model: LayerNorm, learned positions, ReLU FFN of 4d, every linear biased, tied lm_head."""
    d = shape["hidden_size"]
    return ModelSpec(
        name, "opt", **shape, num_kv_heads=shape["num_heads"], head_dim=d // shape["num_heads"],
        intermediate_size=4 * d, vocab_size=50272, max_position=2048, mlp="relu", tie_embeddings=True,
        qkv_bias=True, source=source,
    )  # fmt: skip


# Values copied from each repository's config.json (hidden_size, num_hidden_layers, num_attention_heads,
# num_key_value_heads, intermediate_size / ffn_dim, vocab_size, max_position_embeddings).
_CATALOG = (
    # LLaMA-1 (Touvron et al. 2023): MHA, vocab 32000, context 2048.
    _llama("llama-7b", "huggyllama/llama-7b config.json", num_layers=32, hidden_size=4096, num_heads=32,
           num_kv_heads=32, intermediate_size=11008, vocab_size=32000, max_position=2048),
    _llama("llama-13b", "huggyllama/llama-13b config.json", num_layers=40, hidden_size=5120, num_heads=40,
           num_kv_heads=40, intermediate_size=13824, vocab_size=32000, max_position=2048),
    # "33B" in the paper = HF "llama-30b" (32.5B parameters).
    _llama("llama-33b", "huggyllama/llama-30b config.json (the paper's LLaMA-33B)", num_layers=60,
           hidden_size=6656, num_heads=52, num_kv_heads=52, intermediate_size=17920, vocab_size=32000,
           max_position=2048),
    _llama("llama-65b", "huggyllama/llama-65b config.json", num_layers=80, hidden_size=8192, num_heads=64,
           num_kv_heads=64, intermediate_size=22016, vocab_size=32000, max_position=2048),
    # Llama 2: context 4096; only 70B uses GQA (8 KV heads).
    _llama("llama2-7b", "meta-llama/Llama-2-7b-hf config.json", num_layers=32, hidden_size=4096,
           num_heads=32, num_kv_heads=32, intermediate_size=11008, vocab_size=32000, max_position=4096),
    _llama("llama2-13b", "meta-llama/Llama-2-13b-hf config.json", num_layers=40, hidden_size=5120,
           num_heads=40, num_kv_heads=40, intermediate_size=13824, vocab_size=32000, max_position=4096),
    _llama("llama2-70b", "meta-llama/Llama-2-70b-hf config.json", num_layers=80, hidden_size=8192,
           num_heads=64, num_kv_heads=8, intermediate_size=28672, vocab_size=32000, max_position=4096),
    # Llama 3: GQA with 8 KV heads, vocab 128256, context 8192 (3.1: 131072).
    _llama("llama3-8b", "meta-llama/Meta-Llama-3-8B config.json", num_layers=32, hidden_size=4096,
           num_heads=32, num_kv_heads=8, intermediate_size=14336, vocab_size=128256, max_position=8192),
    _llama("llama3-70b", "meta-llama/Meta-Llama-3-70B config.json", num_layers=80, hidden_size=8192,
           num_heads=64, num_kv_heads=8, intermediate_size=28672, vocab_size=128256, max_position=8192),
    _llama("llama3.1-8b", "meta-llama/Llama-3.1-8B config.json", num_layers=32, hidden_size=4096,
           num_heads=32, num_kv_heads=8, intermediate_size=14336, vocab_size=128256, max_position=131072),
    _llama("llama3.1-70b", "meta-llama/Llama-3.1-70B config.json", num_layers=80, hidden_size=8192,
           num_heads=64, num_kv_heads=8, intermediate_size=28672, vocab_size=128256, max_position=131072),
    _llama("llama3.1-405b", "meta-llama/Llama-3.1-405B config.json", num_layers=126, hidden_size=16384,
           num_heads=128, num_kv_heads=8, intermediate_size=53248, vocab_size=128256, max_position=131072),
    # OPT (Zhang et al. 2022): ffn_dim = 4d, vocab 50272, 2048 learned positions (+2 offset rows).
    _opt("opt-6.7b", "facebook/opt-6.7b config.json", num_layers=32, hidden_size=4096, num_heads=32),
    _opt("opt-13b", "facebook/opt-13b config.json", num_layers=40, hidden_size=5120, num_heads=40),
    _opt("opt-30b", "facebook/opt-30b config.json", num_layers=48, hidden_size=7168, num_heads=56),
    _opt("opt-66b", "facebook/opt-66b config.json", num_layers=64, hidden_size=9216, num_heads=72),
    # Qwen2.5: LLaMA layout plus biases on q, k, v; the base repo lists 131072 positions (Instruct: 32768).
    ModelSpec("qwen2.5-7b", "qwen2", num_layers=28, hidden_size=3584, num_heads=28, num_kv_heads=4,
              head_dim=128, intermediate_size=18944, vocab_size=152064, max_position=131072, mlp="swiglu",
              tie_embeddings=False, qkv_bias=True, source="Qwen/Qwen2.5-7B config.json"),
    ModelSpec("qwen2.5-72b", "qwen2", num_layers=80, hidden_size=8192, num_heads=64, num_kv_heads=8,
              head_dim=128, intermediate_size=29568, vocab_size=152064, max_position=131072, mlp="swiglu",
              tie_embeddings=False, qkv_bias=True, source="Qwen/Qwen2.5-72B config.json"),
    # Mixtral, Qwen3-MoE, DeepSeek-V3 (catalog.moe_models)
    *(MoEModelSpec(**entry) for entry in MOE_MODELS),
)  # fmt: skip
_BY_NAME = {spec.name: spec for spec in _CATALOG}


def list_models() -> list[ModelSpec]:
    """Every catalog model, in catalog order."""
    return list(_CATALOG)


def get_model(name: str) -> ModelSpec:
    """The catalog model called `name` (case-insensitive)."""
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in _BY_NAME:
        raise UserInputError(f"unknown model {name!r}; valid: {', '.join(_BY_NAME)}")
    return _BY_NAME[key]


# ---- parameter counts ------------------------------------------------------------------------------


def _attention_params(spec: ModelSpec) -> tuple[int, int]:
    """(matmul weights, biases) of one layer's q, k, v, o projections."""
    d, q, kv = spec.hidden_size, spec.q_size, spec.kv_size
    weights = d * q + 2 * d * kv + q * d
    if spec.family == "opt":  # every projection biased, out_proj included
        biases = q + 2 * kv + d
    elif spec.qkv_bias:  # Qwen2: q, k, v biased; o_proj not
        biases = q + 2 * kv
    else:
        biases = 0
    return weights, biases


def _mlp_params(spec: ModelSpec) -> tuple[int, int]:
    """(matmul weights, biases) of one layer's FFN."""
    d, f = spec.hidden_size, spec.intermediate_size
    if spec.mlp == "swiglu":  # gate_proj, up_proj (d -> f), down_proj (f -> d), no bias
        return 3 * d * f, 0
    biases = f + d if spec.family == "opt" else 0  # fc1 (d -> f) + bias f, fc2 (f -> d) + bias d
    return 2 * d * f, biases


def _norm_params(spec: ModelSpec) -> int:
    """Parameters of one normalisation layer: RMSNorm has a weight; OPT's LayerNorm weight and bias."""
    return 2 * spec.hidden_size if spec.family == "opt" else spec.hidden_size


def _dense_only(spec: ModelSpec, quantity: str) -> None:
    """UserInputError when `quantity` has no single value for a MoE model (it varies by layer and token)."""
    if spec.moe is not None:
        raise UserInputError(
            f"{spec.name} is a mixture-of-experts model: {quantity} is defined for dense models only "
            "(MoE is not modeled yet by this path)"
        )


def layer_matmul_params(spec: ModelSpec) -> int:
    """Matmul weights of one decoder layer (q, k, v, o and the FFN); no biases, no norms. Dense models only."""
    _dense_only(spec, "the matmul weights of one layer")
    return _attention_params(spec)[0] + _mlp_params(spec)[0]


def param_count(spec: ModelSpec) -> int:
    """Exact parameter count as HF `sum(p.numel() for p in model.parameters())` reports it.

    Layers (projections, biases, two norms each) + token embeddings + OPT's learned positions
    (max_position + 2 rows) + final norm + lm_head unless tied to the embeddings. MoE models: every
    expert counts (`catalog.moe.total_params`).
    """
    if spec.moe is not None:
        return moe.total_params(spec)
    attn_w, attn_b = _attention_params(spec)
    mlp_w, mlp_b = _mlp_params(spec)
    per_layer = attn_w + attn_b + mlp_w + mlp_b + 2 * _norm_params(spec)
    embeddings = spec.vocab_size * spec.hidden_size
    if spec.family == "opt":
        embeddings += (spec.max_position + OPT_POSITION_OFFSET) * spec.hidden_size
    lm_head = 0 if spec.tie_embeddings else spec.vocab_size * spec.hidden_size
    return spec.num_layers * per_layer + embeddings + _norm_params(spec) + lm_head


def weight_bytes(spec: ModelSpec, dtype: str = "fp16") -> int:
    """Bytes to hold every parameter in `dtype`."""
    return param_count(spec) * dtype_bytes(dtype)


# ---- per-token costs (arXiv 2405.01814 v2, Sec. 2-3) -------------------------------------------------


def kv_bytes_per_token(spec: ModelSpec, dtype: str = "fp16") -> int:
    """KV-cache bytes one token occupies: 2 (k and v) * L * n_kv_heads * head_dim * e.

    Latent attention caches L * (kv_lora_rank + qk_rope_head_dim) * e instead (`catalog.moe`)."""
    if spec.mla is not None:
        return moe.mla_kv_bytes_per_token(spec, dtype)
    return 2 * spec.num_layers * spec.kv_size * dtype_bytes(dtype)


def dense_flops_per_token(spec: ModelSpec) -> float:
    """Flops of the dense operators for one token: 2 * (layer matmul weights * L + lm_head weights).

    One multiply-add per weight; the lm_head counts even when tied. Excludes attention scores (see
    `attention_flops_per_token`), norms, activations and biases. Dense models only.
    """
    _dense_only(spec, "dense FLOPs per token")
    lm_head = spec.vocab_size * spec.hidden_size
    return 2.0 * (spec.num_layers * layer_matmul_params(spec) + lm_head)


def attention_flops_per_token(spec: ModelSpec, context_len: int) -> float:
    """Flops of QK^T and PV for one new token attending to `context_len` tokens.

    4 * L * num_heads * head_dim * context: two matmuls of 2 flops per multiply-add each.
    """
    if context_len < 0:
        raise UserInputError(f"context_len must be >= 0, got {context_len}")
    if spec.mla is not None:
        raise UserInputError(f"{spec.name} uses latent attention: its attention FLOPs are not modeled yet")
    return 4.0 * spec.num_layers * spec.num_heads * spec.head_dim * context_len


def net_bytes_per_token_per_layer(spec: ModelSpec, dtype: str = "fp16") -> int:
    """Bytes one token moves between compute and attention pools per layer: (2 + 2/G) * e * d.

    q and the attention output (d each) plus k and v (d/G each); arXiv 2405.01814 v2, Sec. 3.
    Computed as e * (2 * q_size + 2 * kv_size), which equals the formula exactly when q_size = d.
    Latent attention: `catalog.moe.mla_net_bytes_per_token_per_layer` (attention pool without weights).
    """
    if spec.mla is not None:
        return moe.mla_net_bytes_per_token_per_layer(spec, dtype)
    return dtype_bytes(dtype) * (2 * spec.q_size + 2 * spec.kv_size)


def derived_sizes(spec: ModelSpec, dtype: str = "fp16") -> dict[str, float | None]:
    """Every size derived from a config: parameters, weight bytes, KV bytes per token, dense FLOPs per
    token (None for MoE models) and link bytes per token per layer, then the MoE sizes of
    `catalog.moe.moe_sizes` (None for dense models). All derived."""
    return {
        "params": param_count(spec),
        "weight_bytes": weight_bytes(spec, dtype),
        "kv_bytes_per_token": kv_bytes_per_token(spec, dtype),
        "dense_flops_per_token": None if spec.moe is not None else dense_flops_per_token(spec),
        "net_bytes_per_token_per_layer": net_bytes_per_token_per_layer(spec, dtype),
    } | moe.moe_sizes(spec, dtype)


def hf_config(spec: ModelSpec) -> dict:
    """A Hugging Face config.json dict with this shape (for building a random-weight model). Dense only."""
    _dense_only(spec, "a random-weight HF config (profiles are dense)")
    common = {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "tie_word_embeddings": spec.tie_embeddings,
    }
    if spec.family == "opt":
        return common | {
            "model_type": "opt",
            "ffn_dim": spec.intermediate_size,
            "max_position_embeddings": spec.max_position,
            "word_embed_proj_dim": spec.hidden_size,
            "do_layer_norm_before": True,
            "activation_function": "relu",
        }
    return common | {
        "model_type": "qwen2" if spec.family == "qwen2" else "llama",
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "intermediate_size": spec.intermediate_size,
        "max_position_embeddings": spec.max_position,
        "hidden_act": "silu",
    }


def same_layer_shape(a: ModelSpec, b: ModelSpec) -> bool:
    """Whether two models' layers have the same shape (a profile of one applies to the other as measured)."""
    keys = ("hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "head_dim", "mlp", "qkv_bias",
            "moe", "mla", "qk_norm")  # fmt: skip
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def spec_from_hf_config(config: Mapping, name: str = "hf-model") -> ModelSpec:
    """A ModelSpec from a Hugging Face config.json dict (llama / mistral / qwen2 / opt layouts; the MoE
    types mixtral / qwen3_moe / deepseek_v3 give a MoEModelSpec)."""
    if not isinstance(config, Mapping):
        raise UserInputError(f"HF config of {name} must be a JSON object, got {type(config).__name__}")
    kind = str(config.get("model_type", "llama"))
    if kind in moe.MOE_FAMILIES:
        return MoEModelSpec(
            name=name.lower(), source=f"HF config.json ({kind})", **moe.moe_fields_from_hf_config(config)
        )
    family = {"opt": "opt", "qwen2": "qwen2"}.get(kind, "llama")
    try:
        d, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        return ModelSpec(
            name=name.lower(),
            family=family,
            num_layers=int(config["num_hidden_layers"]),
            hidden_size=d,
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or d // heads),
            intermediate_size=int(config["ffn_dim"] if family == "opt" else config["intermediate_size"]),
            vocab_size=int(config["vocab_size"]),
            max_position=int(config.get("max_position_embeddings", 2048)),
            mlp="relu" if family == "opt" else "swiglu",
            tie_embeddings=bool(config.get("tie_word_embeddings", family == "opt")),
            qkv_bias=family in ("opt", "qwen2") or bool(config.get("attention_bias", False)),
            source=f"HF config.json ({kind})",
        )
    except KeyError as exc:
        raise UserInputError(f"HF config is missing {exc.args[0]!r}") from None
    except (ValueError, TypeError, ZeroDivisionError) as exc:  # a field of the wrong type or value
        raise UserInputError(f"HF config of {name}: {' '.join(str(exc).split())}") from None
