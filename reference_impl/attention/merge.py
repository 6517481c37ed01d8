"""Exact merge of attention computed over disjoint key sets.

With S = sum_j exp(s_j) the softmax denominator of a part and A its normalized output,
A = (A1*S1 + A2*S2) / (S1 + S2) (Lamina, arXiv 2405.01814; FlashAttention's rescaling). Carried in
log space, S = exp(lse), so weights are exp(lse_i - lse) with lse = logaddexp(lse1, lse2).
"""

from __future__ import annotations

import torch


def merge_attention(
    out1: torch.Tensor, lse1: torch.Tensor, out2: torch.Tensor, lse2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two partial attentions. out (..., D), lse (...) natural log; an empty part has lse -inf.

    Returns out in out1's dtype and lse fp32; if both parts are empty, out is 0 and lse -inf.
    """
    lse1, lse2 = lse1.float(), lse2.float()
    lse = torch.logaddexp(lse1, lse2)
    # Both empty: lse = -inf and exp(-inf - -inf) is nan; a finite stand-in makes both weights 0.
    ref = torch.where(torch.isinf(lse) & (lse < 0), torch.zeros_like(lse), lse)
    w1 = torch.exp(lse1 - ref).unsqueeze(-1)
    w2 = torch.exp(lse2 - ref).unsqueeze(-1)
    out = out1.float() * w1 + out2.float() * w2
    return out.to(out1.dtype), lse


def merge_attention_many(
    outs: torch.Tensor, lses: torch.Tensor, dim: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge partials stacked along `dim` (>= 0): outs (..., S, ..., D), lses the same without D."""
    if dim < 0:
        raise ValueError(f"dim must be >= 0 (counted from the front), got {dim}")
    lses = lses.float()
    lse = torch.logsumexp(lses, dim=dim)
    ref = torch.where(torch.isinf(lse) & (lse < 0), torch.zeros_like(lse), lse)
    weights = torch.exp(lses - ref.unsqueeze(dim)).unsqueeze(-1)
    out = (outs.float() * weights).sum(dim=dim)
    return out.to(outs.dtype), lse
