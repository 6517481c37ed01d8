"""Mixture-of-experts fields and the sizes derived from them.

A mixture-of-experts model (`catalog.models.MoEModelSpec`) is a ModelSpec plus a `MoESpec` (routed experts,
top-k, shared experts, dense layers, router normalisation) and, for multi-head latent attention
(DeepSeek-V2/V3), an `MLASpec`; dense ModelSpecs read `moe = mla = None`. The sizes below are exact
integers, pure functions of a spec and a dtype (labelled derived wherever shown). This module reads
specs through the `MoEModel` protocol, so catalog.models can import it (never the other way round).

Notation: d hidden size, L layers, E routed experts, k experts per token, I_e expert FFN width,
S shared experts, H query heads, c kv_lora_rank, r qk_rope_head_dim, e bytes per element. Every expert
is a SwiGLU FFN (gate, up, down): 3 * d * I_e weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from lamina_bench.catalog.dtypes import dtype_bytes
from lamina_bench.errors import UserInputError

SCORINGS = (
    "softmax",
    "sigmoid",
)  # router score: softmax over experts (Mixtral, Qwen3) | sigmoid (DeepSeek-V3)
MOE_FAMILIES = ("mixtral", "qwen3_moe", "deepseek_v3")  # model_type of the HF configs read here


def _positive(owner: str, **values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserInputError(f"{owner}: {key} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class MoESpec:
    """The routed FFN of a mixture-of-experts model, as in its HF config.json."""

    num_experts: int  # E: routed experts per MoE layer (num_local_experts / num_experts / n_routed_experts)
    top_k: int  # k: routed experts per token (num_experts_per_tok)
    expert_intermediate_size: (
        int  # I_e: each expert's SwiGLU width (moe_intermediate_size; Mixtral: intermediate_size)
    )
    scoring: str = "softmax"  # one of SCORINGS
    norm_topk_prob: bool = True  # renormalise the k chosen scores to sum to 1
    num_shared_experts: int = 0  # S: experts every token goes through (DeepSeek: n_shared_experts)
    dense_layers: tuple[int, ...] = ()  # layers with a dense FFN of ModelSpec.intermediate_size instead
    n_group: int = 1  # expert groups; a token picks experts only from its topk_group best groups
    topk_group: int = 1
    routed_scaling_factor: float = 1.0  # multiplies the routed experts' weights (DeepSeek-V3: 2.5)
    score_bias: bool = False  # a learned per-expert bias for selection only (e_score_correction_bias)

    def __post_init__(self) -> None:
        owner = "moe"
        _positive(owner, num_experts=self.num_experts, top_k=self.top_k, n_group=self.n_group,
                  topk_group=self.topk_group, expert_intermediate_size=self.expert_intermediate_size)  # fmt: skip
        if self.scoring not in SCORINGS:
            raise UserInputError(f"{owner}: scoring {self.scoring!r}; valid: {', '.join(SCORINGS)}")
        if self.top_k > self.num_experts:
            raise UserInputError(f"{owner}: top_k {self.top_k} > num_experts {self.num_experts}")
        if self.num_experts % self.n_group or self.topk_group > self.n_group:
            raise UserInputError(
                f"{owner}: {self.num_experts} experts in {self.n_group} groups, topk_group {self.topk_group}: "
                "need num_experts divisible by n_group and topk_group <= n_group"
            )
        if self.top_k > self.topk_group * (self.num_experts // self.n_group):
            raise UserInputError(
                f"{owner}: top_k {self.top_k} exceeds the experts of {self.topk_group} groups"
            )
        if not isinstance(self.num_shared_experts, int) or self.num_shared_experts < 0:
            raise UserInputError(
                f"{owner}: num_shared_experts must be an int >= 0, got {self.num_shared_experts!r}"
            )
        if not self.routed_scaling_factor > 0:
            raise UserInputError(
                f"{owner}: routed_scaling_factor must be > 0, got {self.routed_scaling_factor}"
            )


@dataclass(frozen=True)
class MLASpec:
    """Multi-head latent attention (DeepSeek-V2, arXiv 2405.04434 Sec. 2.1): keys and values come from one
    compressed latent of kv_lora_rank per token plus a RoPE key of qk_rope_head_dim shared by all heads."""

    q_lora_rank: int | None  # query down-projection rank (None: q projected from d directly)
    kv_lora_rank: int  # c: the cached latent
    qk_nope_head_dim: int  # per-head query/key width without RoPE
    qk_rope_head_dim: int  # r: per-head RoPE width
    v_head_dim: int  # per-head value width

    def __post_init__(self) -> None:
        _positive("mla", kv_lora_rank=self.kv_lora_rank, qk_nope_head_dim=self.qk_nope_head_dim,
                  qk_rope_head_dim=self.qk_rope_head_dim, v_head_dim=self.v_head_dim)  # fmt: skip
        if self.q_lora_rank is not None:
            _positive("mla", q_lora_rank=self.q_lora_rank)

    @property
    def cache_width(self) -> int:
        """Elements cached per token per layer: the latent c plus the RoPE key r."""
        return self.kv_lora_rank + self.qk_rope_head_dim


class MoEModel(Protocol):
    """What the functions here read of a spec (catalog.models.ModelSpec / MoEModelSpec)."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    head_dim: int
    vocab_size: int
    tie_embeddings: bool
    moe: MoESpec | None
    mla: MLASpec | None
    qk_norm: bool

    @property
    def q_size(self) -> int: ...

    @property
    def kv_size(self) -> int: ...


def is_moe(spec: MoEModel) -> bool:
    """Whether `spec` is a mixture-of-experts model."""
    return spec.moe is not None


def require_dense(spec: MoEModel, path: str) -> None:
    """UserInputError (one line) unless `spec` is dense: `path` (e.g. "the simulator") cannot model MoE yet."""
    if is_moe(spec):
        raise UserInputError(
            f"{spec.name} is a mixture-of-experts model: MoE is not modeled yet by {path} "
            "(`lamina-bench models` lists its derived sizes)"
        )


def check_moe_model(spec: MoEModel) -> None:
    """UserInputError unless the MoE fields fit the rest of the spec (MoEModelSpec.__post_init__)."""
    if not isinstance(spec.moe, MoESpec):
        raise UserInputError(f"model {spec.name}: a MoE model needs a MoESpec, got {spec.moe!r}")
    if spec.mla is not None and not isinstance(spec.mla, MLASpec):
        raise UserInputError(f"model {spec.name}: mla must be an MLASpec, got {spec.mla!r}")
    layers = spec.moe.dense_layers
    if any(not 0 <= i < spec.num_layers for i in layers) or len(set(layers)) != len(layers):
        raise UserInputError(
            f"model {spec.name}: dense_layers {layers} must be distinct layers in 0..{spec.num_layers - 1}"
        )
    if spec.mla is not None and spec.head_dim != spec.mla.qk_nope_head_dim + spec.mla.qk_rope_head_dim:
        raise UserInputError(
            f"model {spec.name}: with MLA, head_dim must be qk_nope_head_dim + qk_rope_head_dim"
        )


# ---- parameter counts ------------------------------------------------------------------------------


def moe_layers(spec: MoEModel) -> int:
    """Layers whose FFN is routed experts."""
    return spec.num_layers - len(spec.moe.dense_layers)


def attention_params(spec: MoEModel) -> int:
    """Weights of one layer's attention: projections, plus Qwen3's q/k norms or MLA's two latent norms.

    GQA: d*q + 2*d*kv + q*d. MLA (HF DeepseekV3Attention): q_a (d x q_lora) + its norm + q_b
    (q_lora x H*(nope+r)) [or q_proj d x H*(nope+r)], kv_a (d x (c+r)) + its norm (c), kv_b
    (c x H*(nope+v)), o (H*v x d). None of these models has attention biases.
    """
    d, h, mla = spec.hidden_size, spec.num_heads, spec.mla
    if mla is None:
        qk_norm = 2 * spec.head_dim if spec.qk_norm else 0
        return 2 * d * spec.q_size + 2 * d * spec.kv_size + qk_norm
    qk = mla.qk_nope_head_dim + mla.qk_rope_head_dim
    if mla.q_lora_rank is None:
        q = d * h * qk
    else:
        q = d * mla.q_lora_rank + mla.q_lora_rank + mla.q_lora_rank * h * qk
    kv = (
        d * mla.cache_width
        + mla.kv_lora_rank
        + mla.kv_lora_rank * h * (mla.qk_nope_head_dim + mla.v_head_dim)
    )
    return q + kv + h * mla.v_head_dim * d


def expert_params(spec: MoEModel) -> int:
    """Weights of one routed (or shared) expert: 3 * d * I_e."""
    return 3 * spec.hidden_size * spec.moe.expert_intermediate_size


def router_params(spec: MoEModel) -> int:
    """Weights of one MoE layer's router: E * d, plus E selection biases when the model has them."""
    e = spec.moe.num_experts
    return e * spec.hidden_size + (e if spec.moe.score_bias else 0)


def total_params(spec: MoEModel) -> int:
    """Every parameter: L * (attention + 2 RMSNorms of d) + the dense FFN layers (3 * d * intermediate_size)
    + per MoE layer the router and E + S experts + token embeddings + final norm + lm_head (untied in every
    catalog MoE model). Equals HF's parameter count plus DeepSeek-V3's selection biases, which the
    checkpoint stores and transformers keeps as buffers; DeepSeek-V3's multi-token-prediction module (a
    separate layer 61, 11.5B) is not part of the model."""
    moe, d = spec.moe, spec.hidden_size
    dense_ffn = len(moe.dense_layers) * 3 * d * spec.intermediate_size
    moe_ffn = moe_layers(spec) * (
        router_params(spec) + (moe.num_experts + moe.num_shared_experts) * expert_params(spec)
    )
    vocab = spec.vocab_size * d * (1 if spec.tie_embeddings else 2)
    return spec.num_layers * (attention_params(spec) + 2 * d) + dense_ffn + moe_ffn + vocab + d


def active_params(spec: MoEModel) -> int:
    """Parameters one token uses: the total less the E - k routed experts it skips in each MoE layer.

    Counts the embedding table, as the Mixtral (12.9B) and Qwen3 (3.3B) model cards do; DeepSeek's
    README_WEIGHTS quotes 36.7B for V3 without the 0.93B embedding table (we give 37.6B).
    """
    skipped = spec.moe.num_experts - spec.moe.top_k
    return total_params(spec) - moe_layers(spec) * skipped * expert_params(spec)


def expert_bytes(spec: MoEModel, dtype: str = "fp16") -> int:
    """Bytes of one expert's weights in `dtype` (3 * d * I_e * e)."""
    return expert_params(spec) * dtype_bytes(dtype)


def routed_expert_bytes(spec: MoEModel, dtype: str = "fp16") -> int:
    """Bytes of every routed expert of every MoE layer (what an expert pool holds): L_moe * E * 3 d I_e * e."""
    return moe_layers(spec) * spec.moe.num_experts * expert_bytes(spec, dtype)


# ---- per-token traffic ----------------------------------------------------------------------------


def mla_kv_bytes_per_token(spec: MoEModel, dtype: str = "fp16") -> int:
    """KV-cache bytes one token occupies with MLA: L * (c + r) * e.

    The latent and the shared RoPE key are all a decode step needs (the key and value up-projections are
    absorbed into the query and the output, DeepSeek-V2 Sec. 2.1.2); nothing per head is cached.
    """
    return spec.num_layers * spec.mla.cache_width * dtype_bytes(dtype)


def mla_net_bytes_per_token_per_layer(
    spec: MoEModel, dtype: str = "fp16", weights_on: str = "compute"
) -> int:
    """Bytes one token moves per layer between the compute pool and an attention pool that holds the latent
    KV cache (Lamina's split: attention devices run only attention over their cache).

    weights_on="compute" (default; the attention pool holds no weights): the compute pool absorbs the key
    and value up-projections (kv_b_proj), so it sends the query in latent space, H * (c + r), and the new
    latent + RoPE key, c + r, and receives each head's latent output, H * c:
        e * (H * (c + r) + (c + r) + H * c).
    weights_on="attention": the attention pool holds kv_b_proj (c * H * (nope + v) weights per layer) and
    applies it itself; the query crosses per head, H * (nope + r), the output per head, H * v:
        e * (H * (nope + r) + (c + r) + H * v).
    """
    m, h, e = spec.mla, spec.num_heads, dtype_bytes(dtype)
    if weights_on == "compute":
        return e * (h * m.cache_width + m.cache_width + h * m.kv_lora_rank)
    if weights_on == "attention":
        return e * (h * (m.qk_nope_head_dim + m.qk_rope_head_dim) + m.cache_width + h * m.v_head_dim)
    raise UserInputError(f"weights_on {weights_on!r}; valid: compute, attention")


def afd_bytes_per_token_per_layer(spec: MoEModel, dtype: str = "fp16") -> tuple[int, int]:
    """(dispatch, combine) bytes one token moves per MoE layer between an attention pool and an expert pool
    (attention-FFN disaggregation, e.g. MegaScale-Infer arXiv 2504.02263): k copies of its hidden state
    go out, one to each chosen expert, and k expert outputs come back: k * d * e each way.

    Assumed placement: the router and the shared experts run with attention (they see every token), so
    only routed-expert traffic crosses. Dense layers (moe.dense_layers) move nothing.
    """
    one_way = spec.moe.top_k * spec.hidden_size * dtype_bytes(dtype)
    return one_way, one_way


MOE_SIZE_KEYS = ("active_params", "expert_bytes", "routed_expert_bytes", "afd_bytes_per_token_per_layer")


def moe_sizes(spec: MoEModel, dtype: str = "fp16") -> dict[str, int | None]:
    """The MoE-only derived sizes (None for a dense model): active parameters, bytes of one expert and of
    all routed experts, AFD dispatch + combine bytes per token per MoE layer."""
    if not is_moe(spec):
        return dict.fromkeys(MOE_SIZE_KEYS)
    dispatch, combine = afd_bytes_per_token_per_layer(spec, dtype)
    return {
        "active_params": active_params(spec),
        "expert_bytes": expert_bytes(spec, dtype),
        "routed_expert_bytes": routed_expert_bytes(spec, dtype),
        "afd_bytes_per_token_per_layer": dispatch + combine,
    }


# ---- HF config.json --------------------------------------------------------------------------------


def _routing(config: Mapping, kind: str) -> MoESpec:
    """The MoESpec of a mixtral / qwen3_moe / deepseek_v3 config.json."""
    top_k = int(config["num_experts_per_tok"])
    if kind == "mixtral":  # every layer MoE; intermediate_size is each expert's width
        return MoESpec(int(config["num_local_experts"]), top_k, int(config["intermediate_size"]))
    if kind == "qwen3_moe":
        experts = config["num_experts"] if "num_experts" in config else config["num_local_experts"]
        step, only = int(config.get("decoder_sparse_step", 1)), set(config.get("mlp_only_layers") or ())
        dense = tuple(i for i in range(int(config["num_hidden_layers"])) if i in only or (i + 1) % step)
        return MoESpec(int(experts), top_k, int(config["moe_intermediate_size"]), "softmax",
                       bool(config.get("norm_topk_prob", False)), dense_layers=dense)  # fmt: skip
    return MoESpec(
        int(config["n_routed_experts"]), top_k, int(config["moe_intermediate_size"]),
        str(config.get("scoring_func", "sigmoid")), bool(config.get("norm_topk_prob", True)),
        int(config.get("n_shared_experts") or 0), tuple(range(int(config.get("first_k_dense_replace", 0)))),
        int(config.get("n_group") or 1), int(config.get("topk_group") or 1),
        float(config.get("routed_scaling_factor", 1.0)), score_bias=True,  # V3 always has the bias
    )  # fmt: skip


def moe_fields_from_hf_config(config: Mapping) -> dict[str, Any]:
    """MoEModelSpec keyword arguments of a HF config.json dict of model_type mixtral, qwen3_moe or
    deepseek_v3 (all but name and source); UserInputError naming a missing or malformed field."""
    kind = str(config.get("model_type"))
    if kind not in MOE_FAMILIES:
        raise UserInputError(f"model_type {kind!r} is not a MoE type; valid: {', '.join(MOE_FAMILIES)}")
    try:
        d, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        mla = None
        if kind == "deepseek_v3":
            q_lora = config.get("q_lora_rank")
            mla = MLASpec(None if q_lora is None else int(q_lora), int(config["kv_lora_rank"]),
                          int(config["qk_nope_head_dim"]), int(config["qk_rope_head_dim"]),
                          int(config["v_head_dim"]))  # fmt: skip
        head_dim = (
            mla.qk_nope_head_dim + mla.qk_rope_head_dim if mla else int(config.get("head_dim") or d // heads)
        )
        return dict(
            family=kind, num_layers=int(config["num_hidden_layers"]), hidden_size=d, num_heads=heads,
            num_kv_heads=heads if mla else int(config.get("num_key_value_heads") or heads), head_dim=head_dim,
            intermediate_size=int(config["intermediate_size"]), vocab_size=int(config["vocab_size"]),
            max_position=int(config.get("max_position_embeddings", 2048)), mlp="swiglu",
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=bool(config.get("attention_bias", False)), moe=_routing(config, kind), mla=mla,
            qk_norm=kind == "qwen3_moe",
        )  # fmt: skip
    except KeyError as exc:
        raise UserInputError(f"HF config ({kind}) is missing {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise UserInputError(f"HF config ({kind}) has a malformed value ({exc})") from None
