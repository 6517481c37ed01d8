"""Multi-head latent attention (DeepSeek-V2, arXiv 2405.04434 Sec. 2.1; DeepSeek-V3) in the absorbed form,
which caches only the latent.

Per token, kv_a projects x to a latent c (kv_lora_rank wide, RMS-normalised) and a RoPE key k_r
(qk_rope_head_dim) that all heads share; kv_b would expand c into each head's key k_c (qk_nope_head_dim)
and value (v_head_dim). Instead, the key half of kv_b (W_UK, per head nope x c) is absorbed into the
query and the value half (W_UV, per head v x c) into the output:
    q_h . k_h = q_c,h . (W_UK,h c) + q_r,h . k_r = (W_UK,h^T q_c,h) . c + q_r,h . k_r
so attention is multi-query attention over one "head" of width c + r: query (W_UK^T q_c, q_r), key
(c, k_r), value c. The paged cache and the decode kernels are reused unchanged, with Hkv = 1, D = c + r
and k = v = (c, k_r) (the value's last r features come out of attention with the output and are
dropped). What the cache holds per token per layer: the latent and the RoPE key, twice (k and v are
stored apart), 2 (c + r) elements, against H (nope + r + v) for the expanded keys and values (1,152 vs
40,960 for DeepSeek-V3); the catalog's MLA KV size counts c + r once, what a latent cache needs. The
kernels scale scores by D^-0.5, so the query is multiplied by softmax_scale * D^0.5 first and the model's
(nope + r)^-0.5 applies. One KV head: no tensor parallelism, one attention worker in Lamina.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
from torch import nn

from reference_impl.errors import ConfigError
from reference_impl.layers import RMSNorm, apply_rope, attention

torch.fx.wrap("attention")  # this module calls `attention` too: a torch.fx trace keeps it one leaf

# q_a_layernorm and kv_a_layernorm use transformers' DeepseekV3RMSNorm default eps, not rms_norm_eps
LATENT_NORM_EPS = 1e-6


@dataclass(frozen=True)
class MLAConfig:
    q_lora_rank: int | None  # query down-projection rank; None: q_proj straight from d
    kv_lora_rank: int  # c: the cached latent
    qk_nope_head_dim: int  # per-head query/key width without RoPE
    qk_rope_head_dim: int  # r: per-head RoPE width (the RoPE key is shared by all heads)
    v_head_dim: int  # per-head value width
    rope_interleave: bool = True  # DeepSeek's RoPE rotates neighbouring pairs (x0, x1), (x2, x3), ...

    def __post_init__(self) -> None:
        for name in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"MLA {name} must be an integer >= 1, got {value!r}")
        if self.q_lora_rank is not None and (not isinstance(self.q_lora_rank, int) or self.q_lora_rank < 1):
            raise ConfigError(f"MLA q_lora_rank must be null or an integer >= 1, got {self.q_lora_rank!r}")
        if self.qk_rope_head_dim % 2:
            raise ConfigError(
                f"MLA qk_rope_head_dim must be even (RoPE rotates pairs), got {self.qk_rope_head_dim}"
            )

    @property
    def cache_width(self) -> int:
        """D of the attention call: latent + RoPE key."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def softmax_scale(self) -> float:
        """The model's score scale, (qk_nope_head_dim + qk_rope_head_dim)^-0.5 (no YaRN)."""
        return (self.qk_nope_head_dim + self.qk_rope_head_dim) ** -0.5


def _pairs_to_halves(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (x0, x2, ..., x1, x3, ...): interleaved RoPE pairs to rotate-half layout."""
    return torch.cat((x[..., 0::2], x[..., 1::2]), dim=-1)


class MLAttention(nn.Module):
    """Latent attention of one layer (module doc); same forward signature as model.Attention."""

    def __init__(self, mla: MLAConfig, hidden: int, num_heads: int, layer: int, tp: Any) -> None:
        super().__init__()
        if tp.size != 1:
            raise ConfigError("latent attention runs without tensor parallelism (its cache has one KV head)")
        self.mla, self.layer, self.n_heads = mla, layer, num_heads
        c, nope, r, v = mla.kv_lora_rank, mla.qk_nope_head_dim, mla.qk_rope_head_dim, mla.v_head_dim
        if mla.q_lora_rank is None:
            self.wq = tp.column(hidden, num_heads * (nope + r), False)
        else:
            self.q_a = tp.column(hidden, mla.q_lora_rank, False)
            self.q_a_norm = RMSNorm(mla.q_lora_rank, LATENT_NORM_EPS, tp.device, tp.dtype)
            self.q_b = tp.column(mla.q_lora_rank, num_heads * (nope + r), False)
        self.kv_a = tp.column(hidden, c + r, False)
        self.kv_a_norm = RMSNorm(c, LATENT_NORM_EPS, tp.device, tp.dtype)
        self.kv_b = tp.column(c, num_heads * (nope + v), False)  # rows h*(nope+v)..: head h's key, then value
        self.wo = tp.row(num_heads * v, hidden, False)
        self.q_scale = mla.softmax_scale * math.sqrt(mla.cache_width)  # the kernels scale by (c + r)^-0.5

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, ...], ctx: Any) -> torch.Tensor:
        m, h = self.mla, self.n_heads
        c, nope, r, v = m.kv_lora_rank, m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim
        q = self.wq(x) if m.q_lora_rank is None else self.q_b(self.q_a_norm(self.q_a(x)))
        q_c, q_r = q.view(-1, h, nope + r).split([nope, r], dim=-1)  # (T, H, nope), (T, H, r)
        latent, k_r = self.kv_a(x).split([c, r], dim=-1)  # (T, c), (T, r)
        latent, k_r = self.kv_a_norm(latent)[:, None, :], k_r[:, None, :]  # (T, 1, c), (T, 1, r)
        if m.rope_interleave:
            q_r, k_r = _pairs_to_halves(q_r), _pairs_to_halves(k_r)
        cos, sin = rope  # (T, r) each
        q_r, k_r = apply_rope(q_r, cos, sin), apply_rope(k_r, cos, sin)
        w_uk = self._kv_b_heads()[:, :nope]  # (H, nope, c)
        q_latent = torch.einsum("thn,hnc->thc", q_c, w_uk)  # (T, H, c)
        query = torch.cat((q_latent, q_r), dim=-1) * self.q_scale  # (T, H, c + r)
        key = torch.cat((latent, k_r), dim=-1)  # (T, 1, c + r): the key, and (its first c) the value
        out = attention(query, key, key, self.layer, ctx)  # (T, H, c + r)
        w_uv = self._kv_b_heads()[:, nope:]  # (H, v, c); taken after the cut, so no weight view crosses it
        heads = torch.einsum("thc,hvc->thv", out[..., :c], w_uv)  # (T, H, v)
        return self.wo(heads.reshape(-1, h * v))  # (T, d)

    def _kv_b_heads(self) -> torch.Tensor:
        """kv_b's weight per head, (H, nope + v, c): each head's key rows, then its value rows."""
        m = self.mla
        return self.kv_b.weight.view(self.n_heads, m.qk_nope_head_dim + m.v_head_dim, m.kv_lora_rank)
