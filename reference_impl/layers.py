"""Building blocks shared by the attention variants (model.py's GQA/MHA, mla.py's latent attention):
THE attention call the converter cuts the model at, rotary position embeddings, RMSNorm.

Tokens are flattened (varlen): q (T, Hq, D), k/v (T, Hkv, D) hold every token of a step.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import nn


class Llama3RopeScaling(NamedTuple):
    """Llama 3.1 RoPE frequency scaling (`rope_type: llama3` in config.json)."""

    factor: float  # long wavelengths are stretched by this factor (8 for Llama 3.1)
    low_freq_factor: float  # wavelengths above original_max_position / low_freq_factor are scaled fully
    high_freq_factor: float  # wavelengths below original_max_position / high_freq_factor are kept
    original_max_position: int  # context length of pre-training (8192 for Llama 3)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int, ctx: Any) -> torch.Tensor:
    """THE attention call of every layer: the converter cuts the model here, Lamina ships q/k/v away here.

    q (T, Hq, D), k/v (T, Hkv, D): all tokens of the step, flattened over sequences (varlen); k/v are
    the new tokens' keys and values, which ctx appends to its cache. Scale is D**-0.5. Returns (T, Hq, D).
    """
    return ctx.attend(q, k, v, layer)


# Every module that calls `attention` by name registers it with torch.fx.wrap, so that a trace keeps it as
# one call_function leaf (model.py, mla.py).


# ---------------------------------------------------------------------------------------------- RoPE
def rope_inv_freq(head_dim: int, theta: float, scaling: Llama3RopeScaling | None) -> torch.Tensor:
    """Inverse frequencies (D/2,) float32 of rotate-half RoPE (RoFormer, arXiv 2104.09864).

    With Llama-3.1 scaling (Meta's llama-models `apply_scaling`): frequencies whose wavelength exceeds
    original_max_position / low_freq_factor are divided by `factor`; those shorter than
    original_max_position / high_freq_factor are kept; in between they are blended linearly in
    original_max_position / wavelength. Computed in float32 like the reference code.
    """
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (D/2,)
    if scaling is None:
        return inv_freq
    wavelen = 2 * math.pi / inv_freq
    low_wavelen = scaling.original_max_position / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position / scaling.high_freq_factor
    smooth = (scaling.original_max_position / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blended = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, blended, scaled)


def rope_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, ...]:
    """cos, sin (T, D) for arbitrary per-token positions (T,): angles in float32, then cast to `dtype`."""
    freqs = positions.float()[:, None] * inv_freq[None, :]  # (T, D/2)
    angles = torch.cat((freqs, freqs), dim=-1)  # (T, D): rotate-half pairs dim i with dim i + D/2
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (T, H, D) by the angles of cos/sin (T, D)."""
    x1, x2 = x.chunk(2, dim=-1)  # (T, H, D/2) each
    rotated = torch.cat((-x2, x1), dim=-1)  # (T, H, D)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


# -------------------------------------------------------------------------------------------- RMSNorm
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, device=None, dtype=None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # statistics in float32 (as HF and Meta do) so fp16 sums of squares cannot overflow
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)
