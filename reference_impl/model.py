"""Decoder-only transformers for the Lamina reference implementation: the LLaMA family, OPT and the
mixture-of-experts models Mixtral, Qwen3-MoE and DeepSeek-V3.

One module serves them all because they differ in only a few places, all chosen from the config:
positions (rotary embedding vs a learned table), normalisation (RMSNorm vs LayerNorm), the MLP (SwiGLU,
ReLU, or routed SwiGLU experts from moe.py), Qwen3's RMSNorm on each query and key head, and DeepSeek's
latent attention (mla.py). Every attention goes through the function `attention` (layers.py), which the
converter (converter.py) keeps as one node of a torch.fx graph and cuts the model around.

Tokens are flattened: a step over several sequences is one (T, d) tensor plus the position of each token
in its own sequence (varlen layout, as in vLLM). The attention context `ctx` knows which token belongs to
which sequence and owns the KV cache; the model never sees sequence boundaries.

This module is the architecture only; checkpoint.py reads a Hugging Face folder into a ModelConfig and
loads its weights into a DecoderModel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.fx
import torch.nn.functional as F
from torch import nn

from reference_impl.errors import ConfigError
from reference_impl.layers import (
    Llama3RopeScaling,
    RMSNorm,
    apply_rope,
    attention,
    rope_cos_sin,
    rope_inv_freq,
)
from reference_impl.mla import MLAConfig, MLAttention
from reference_impl.moe import MoEBlock, MoEConfig
from reference_impl.parallel import ColumnParallelLinear, RowParallelLinear

torch.fx.wrap("attention")  # a torch.fx trace keeps `attention` as one call_function leaf

ARCHS = ("llama", "opt", "mixtral", "qwen3_moe", "deepseek_v3")
MOE_ARCHS = ("mixtral", "qwen3_moe", "deepseek_v3")
# HF's OPTLearnedPositionalEmbedding looks up row position + 2 (metaseq reserved rows for padding).
OPT_POSITION_OFFSET = 2


@dataclass(frozen=True)
class ModelConfig:
    arch: str  # "llama" (LLaMA-1/2/3/3.1) | "opt" (pre-LN OPT) | "mixtral" | "qwen3_moe" | "deepseek_v3"
    vocab_size: int
    hidden_size: int  # d
    intermediate_size: int  # MLP width (OPT: ffn_dim)
    num_layers: int
    num_heads: int  # query heads
    num_kv_heads: int  # key/value heads (== num_heads for MHA; fewer for GQA; 1 with MLA: the latent)
    head_dim: int  # D (MLA: kv_lora_rank + qk_rope_head_dim, the width attention and the cache see)
    max_position: int
    norm_eps: float
    rope_theta: float = 10000.0  # every arch but OPT
    rope_scaling: Llama3RopeScaling | None = None  # None = plain RoPE
    tie_embeddings: bool = False  # lm_head shares the token embedding matrix
    bias: bool = False  # q/k/v/o and MLP linears carry biases (OPT: yes; LLaMA: no)
    moe: MoEConfig | None = None  # routed experts (the MOE_ARCHS); None = dense MLP in every layer
    qk_norm: bool = False  # RMSNorm over each q and k head before RoPE (Qwen3)
    mla: MLAConfig | None = None  # latent attention (deepseek_v3) instead of q/k/v/o projections

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"unsupported arch {self.arch!r}; supported: {', '.join(ARCHS)}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads != 0:
            raise ConfigError(
                f"num_heads {self.num_heads} must be a multiple of num_kv_heads {self.num_kv_heads}"
            )
        if self.head_dim < 2 or self.head_dim % 2 != 0:
            raise ConfigError(f"head_dim must be even and >= 2 (RoPE rotates pairs), got {self.head_dim}")
        if self.max_position < 1 or self.norm_eps <= 0:
            raise ConfigError(
                f"need max_position >= 1 and norm_eps > 0, got {self.max_position}, {self.norm_eps}"
            )
        if self.arch == "opt" and (self.rope_scaling is not None or self.num_kv_heads != self.num_heads):
            raise ConfigError("OPT uses learned positions and multi-head attention: no rope_scaling, no GQA")
        if (self.arch in MOE_ARCHS) != (self.moe is not None):
            raise ConfigError(
                f"arch {self.arch!r}: routed experts are for {', '.join(MOE_ARCHS)} and required there"
            )
        if (self.arch == "deepseek_v3") != (self.mla is not None):
            raise ConfigError(f"arch {self.arch!r}: latent attention is for deepseek_v3 and required there")
        if self.mla is not None and (self.num_kv_heads, self.head_dim) != (1, self.mla.cache_width):
            raise ConfigError("latent attention caches one head of kv_lora_rank + qk_rope_head_dim features")
        if self.moe is not None and any(not 0 <= i < self.num_layers for i in self.moe.dense_layers):
            raise ConfigError(
                f"MoE dense layers {self.moe.dense_layers} must lie in 0..{self.num_layers - 1}"
            )

    @property
    def uses_rope(self) -> bool:
        return self.arch != "opt"

    @property
    def rope_dim(self) -> int:
        """Features each RoPE rotates: the head (MLA: qk_rope_head_dim)."""
        return self.head_dim if self.mla is None else self.mla.qk_rope_head_dim

    @property
    def group_size(self) -> int:
        """G: query heads per KV head."""
        return self.num_heads // self.num_kv_heads


# -------------------------------------------------------------------------------------------- layers
def make_norm(cfg: ModelConfig, device, dtype) -> nn.Module:
    if cfg.arch != "opt":
        return RMSNorm(cfg.hidden_size, cfg.norm_eps, device=device, dtype=dtype)
    return nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, device=device, dtype=dtype)


@dataclass(frozen=True)
class _TP:
    """Where this module sits in the tensor-parallel group; passed down to every parallel linear."""

    rank: int
    size: int
    group: dist.ProcessGroup | None
    device: torch.device | str | None
    dtype: torch.dtype

    def column(self, n_in: int, n_out: int, bias: bool) -> ColumnParallelLinear:
        return ColumnParallelLinear(
            n_in, n_out, bias, self.rank, self.size, device=self.device, dtype=self.dtype
        )

    def row(self, n_in: int, n_out: int, bias: bool) -> RowParallelLinear:
        return RowParallelLinear(
            n_in, n_out, bias, self.rank, self.size, self.group, device=self.device, dtype=self.dtype
        )


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, tp: _TP) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads = cfg.num_heads // tp.size, cfg.num_kv_heads // tp.size  # local
        self.head_dim = cfg.head_dim
        d, D = cfg.hidden_size, cfg.head_dim
        # column-parallel: each rank owns whole heads (rows h*D..(h+1)*D of the HF weight are head h)
        self.wq = tp.column(d, cfg.num_heads * D, cfg.bias)
        self.wk = tp.column(d, cfg.num_kv_heads * D, cfg.bias)
        self.wv = tp.column(d, cfg.num_kv_heads * D, cfg.bias)
        self.wo = tp.row(cfg.num_heads * D, d, cfg.bias)
        self.q_norm = RMSNorm(D, cfg.norm_eps, tp.device, tp.dtype) if cfg.qk_norm else None
        self.k_norm = RMSNorm(D, cfg.norm_eps, tp.device, tp.dtype) if cfg.qk_norm else None

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, ...] | None, ctx: Any) -> torch.Tensor:
        q = self.wq(x).view(-1, self.n_heads, self.head_dim)  # (T, d) -> (T, Hq/tp, D)
        k = self.wk(x).view(-1, self.n_kv_heads, self.head_dim)  # (T, Hkv/tp, D)
        v = self.wv(x).view(-1, self.n_kv_heads, self.head_dim)  # (T, Hkv/tp, D)
        if self.q_norm is not None:  # Qwen3: each head normalised over its D features
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        o = attention(q, k, v, self.layer, ctx)  # (T, Hq/tp, D)
        return self.wo(o.reshape(-1, self.n_heads * self.head_dim))  # (T, Hq/tp*D) -> (T, d)


class SwiGLU(nn.Module):
    """LLaMA MLP: down(silu(gate(x)) * up(x)) (Shazeer, arXiv 2002.05202)."""

    def __init__(self, cfg: ModelConfig, tp: _TP) -> None:
        super().__init__()
        self.w_gate = tp.column(cfg.hidden_size, cfg.intermediate_size, cfg.bias)
        self.w_up = tp.column(cfg.hidden_size, cfg.intermediate_size, cfg.bias)
        self.w_down = tp.row(cfg.intermediate_size, cfg.hidden_size, cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))  # (T, d) -> (T, I/tp) -> (T, d)


class ReluMLP(nn.Module):
    """OPT MLP: fc2(relu(fc1(x)))."""

    def __init__(self, cfg: ModelConfig, tp: _TP) -> None:
        super().__init__()
        self.fc1 = tp.column(cfg.hidden_size, cfg.intermediate_size, cfg.bias)
        self.fc2 = tp.row(cfg.intermediate_size, cfg.hidden_size, cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))  # (T, d) -> (T, I/tp) -> (T, d)


class Block(nn.Module):
    """Pre-norm decoder layer: x + attn(norm(x)), then h + mlp(norm(h))."""

    def __init__(self, cfg: ModelConfig, layer: int, tp: _TP) -> None:
        super().__init__()
        self.attn_norm = make_norm(cfg, tp.device, tp.dtype)
        if cfg.mla is not None:
            self.attn = MLAttention(cfg.mla, cfg.hidden_size, cfg.num_heads, layer, tp)
        else:
            self.attn = Attention(cfg, layer, tp)
        self.mlp_norm = make_norm(cfg, tp.device, tp.dtype)
        if cfg.moe is not None and cfg.moe.is_sparse(layer):
            self.mlp = MoEBlock(cfg.moe, cfg.hidden_size, tp)
        else:
            self.mlp = ReluMLP(cfg, tp) if cfg.arch == "opt" else SwiGLU(cfg, tp)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, ...] | None, ctx: Any) -> torch.Tensor:
        h = x + self.attn(self.attn_norm(x), rope, ctx)  # (T, d)
        return h + self.mlp(self.mlp_norm(h))  # (T, d)


def check_tp(cfg: ModelConfig, tp_size: int) -> None:
    """ConfigError unless heads and MLP (or expert) widths split evenly over tp_size ranks."""
    if cfg.mla is not None and tp_size != 1:
        raise ConfigError(
            f"latent attention (deepseek_v3) runs with tp_size 1 (one latent KV head), got {tp_size}"
        )
    widths = {"num_heads": cfg.num_heads, "num_kv_heads": cfg.num_kv_heads}
    if cfg.moe is None or cfg.moe.dense_layers:
        widths["intermediate_size"] = cfg.intermediate_size
    if cfg.moe is not None:
        widths["expert_intermediate_size"] = cfg.moe.expert_intermediate_size
    for name, width in widths.items():
        if tp_size < 1 or width % tp_size != 0:
            raise ConfigError(f"{name}={width} is not divisible by tp_size={tp_size}")


class DecoderModel(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        tp_rank: int = 0,
        tp_size: int = 1,
        group: dist.ProcessGroup | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        check_tp(config, tp_size)
        self.config, self.tp_rank, self.tp_size = config, tp_rank, tp_size
        tp = _TP(tp_rank, tp_size, group, device, dtype)
        d = config.hidden_size

        def table(rows: int) -> nn.Parameter:  # replicated on every rank; filled by the loader
            return nn.Parameter(torch.empty(rows, d, device=device, dtype=dtype), requires_grad=False)

        self.embed = table(config.vocab_size)  # (V, d)
        self.pos_embed = None if config.uses_rope else table(config.max_position + OPT_POSITION_OFFSET)
        inv_freq = (
            rope_inv_freq(config.rope_dim, config.rope_theta, config.rope_scaling)
            if config.uses_rope
            else None
        )
        # float32 and non-persistent: never cast to the weights' dtype, never looked for in checkpoints
        self.register_buffer("inv_freq", None if inv_freq is None else inv_freq.to(device), persistent=False)
        self.layers = nn.ModuleList(Block(config, i, tp) for i in range(config.num_layers))
        self.norm = make_norm(config, device, dtype)
        self.lm_head = self.embed if config.tie_embeddings else table(config.vocab_size)  # (V, d)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: Any) -> torch.Tensor:
        """input_ids (T,) int64, positions (T,) int64 (each token's position in its own sequence), ctx: the
        attention context (anything with .attend(q, k, v, layer)). Returns hidden states (T, d) after the
        final norm."""
        x = F.embedding(input_ids, self.embed)  # (T, d)
        rope = None
        if self.pos_embed is not None:
            x = x + F.embedding(positions + OPT_POSITION_OFFSET, self.pos_embed)  # (T, d)
        if self.inv_freq is not None:
            rope = rope_cos_sin(positions, self.inv_freq, x.dtype)  # cos, sin: (T, D) each
        for block in self.layers:
            x = block(x, rope, ctx)  # (T, d)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, d) -> (N, V) float32."""
        return F.linear(hidden, self.lm_head).float()
