"""Batched torch decode attention: the CPU path of `decode_attention` (the reference loops per sequence).

One gather of every sequence's blocks padded to the longest sequence, GQA by viewing the query heads as
(kv head, group) instead of repeating K/V, fp32 math, lengths masked. Checked against
`decode_attention_ref` on random paged inputs in tests/reference_impl/test_torch_decode.py.
"""

from __future__ import annotations

import torch


def decode_attention_torch(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as decode_attention_ref: out (B,Hq,D) in q's dtype, lse (B,Hq) fp32."""
    batch, num_q_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_q_heads // num_kv_heads
    max_len = int(seq_lens.max()) if batch else 0
    if max_len == 0:  # nothing to attend to: out 0, lse -inf (as the reference)
        lse = torch.full((batch, num_q_heads), float("-inf"), device=q.device)
        return torch.zeros_like(q), lse
    ids = block_tables[:, : -(-max_len // block_size)].long()  # (B, nblk); padding entries are masked below
    k = k_cache[ids].flatten(1, 2)[:, :max_len].float()  # (B, S, Hkv, D)
    v = v_cache[ids].flatten(1, 2)[:, :max_len].float()
    # query head h = kv head h // G, member h % G; reshape, so a non-contiguous q never needs a view
    qg = q.float().reshape(batch, num_kv_heads, group, head_dim)
    scores = torch.einsum("bhgd,bshd->bhgs", qg, k) * scale  # (B, Hkv, G, S)
    visible = torch.arange(max_len, device=q.device)[None, :] < seq_lens.to(q.device)[:, None]  # (B, S)
    scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # (B, Hkv, G)
    probs = torch.exp(scores - lse.unsqueeze(-1)).nan_to_num(0.0)  # empty sequence: nan -> 0
    out = torch.einsum("bhgs,bshd->bhgd", probs, v)  # (B, Hkv, G, D)
    return out.reshape(batch, num_q_heads, head_dim).to(q.dtype), lse.reshape(batch, num_q_heads)
