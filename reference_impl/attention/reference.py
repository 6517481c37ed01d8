"""Torch reference attention: simple, fp32, obviously right. The Triton kernel is tested against it.

lse is the natural-log log-sum-exp of the scaled scores of each query head, so that
softmax denominators of disjoint key sets can be merged exactly (see merge.py).
"""

from __future__ import annotations

import torch


def gather_paged_kv(
    k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor, seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """k, v (seq_len, Hkv, D) of one sequence, read through its block table from one layer's cache.

    k_cache/v_cache: (num_blocks, block_size, Hkv, D); block_table: (max_blocks,) int.
    """
    block_size = k_cache.shape[1]
    num_blocks = -(-seq_len // block_size)
    if num_blocks > block_table.shape[0]:
        raise ValueError(
            f"seq_len {seq_len} needs {num_blocks} blocks, block table has {block_table.shape[0]}"
        )
    ids = block_table[:num_blocks].long()
    k = k_cache[ids].flatten(0, 1)[:seq_len]  # (seq_len, Hkv, D)
    v = v_cache[ids].flatten(0, 1)[:seq_len]
    return k, v


def _expand_kv_heads(x: torch.Tensor, num_q_heads: int) -> torch.Tensor:
    # GQA: query head h reads kv head h // (Hq // Hkv), i.e. each kv head repeated G times in a row.
    group = num_q_heads // x.shape[1]
    return x.repeat_interleave(group, dim=1)


def _check_heads(num_q_heads: int, num_kv_heads: int) -> None:
    if num_q_heads % num_kv_heads:
        raise ValueError(f"query heads ({num_q_heads}) must be a multiple of kv heads ({num_kv_heads})")


def attention_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense attention of one sequence in fp32. q (Tq,Hq,D), k/v (Tk,Hkv,D), mask (Tq,Tk) bool (True=see).

    Returns out (Tq,Hq,D) fp32 and lse (Tq,Hq) fp32; a query that sees no key gets out 0 and lse -inf.
    """
    _check_heads(q.shape[1], k.shape[1])
    kf = _expand_kv_heads(k.float(), q.shape[1])
    vf = _expand_kv_heads(v.float(), q.shape[1])
    scores = torch.einsum("qhd,khd->hqk", q.float(), kf) * scale  # (Hq, Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # (Hq, Tq); -inf where nothing is visible
    probs = torch.exp(scores - lse.unsqueeze(-1)).nan_to_num(0.0)  # empty rows: exp(-inf - -inf) = nan -> 0
    out = torch.einsum("hqk,khd->qhd", probs, vf)
    return out, lse.transpose(0, 1).contiguous()


def decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One query token per sequence over its paged keys.

    q (B,Hq,D); k_cache/v_cache (num_blocks, block_size, Hkv, D) of one layer; block_tables (B, max_blocks)
    int32; seq_lens (B,) int32. Returns out (B,Hq,D) in q's dtype and lse (B,Hq) fp32.
    """
    batch = q.shape[0]
    if block_tables.shape[0] != batch or seq_lens.shape[0] != batch:
        raise ValueError(
            f"batch mismatch: q {batch}, block_tables {block_tables.shape[0]}, seq_lens {seq_lens.shape[0]}"
        )
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    lse = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device)
    for b, seq_len in enumerate(seq_lens.tolist()):
        k, v = gather_paged_kv(k_cache, v_cache, block_tables[b], seq_len)
        out_b, lse_b = attention_with_lse(q[b : b + 1], k, v, scale)
        out[b], lse[b] = out_b[0], lse_b[0]
    return out.to(q.dtype), lse


def prefill_attention_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal_offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention of one sequence: query i sits at position causal_offset+i, sees keys 0..that.

    q (Tq,Hq,D), k/v (Tk,Hkv,D). Returns out (Tq,Hq,D) in q's dtype and lse (Tq,Hq) fp32.
    """
    tq, tk = q.shape[0], k.shape[0]
    query_pos = torch.arange(tq, device=q.device).unsqueeze(1) + causal_offset  # (Tq, 1)
    mask = torch.arange(tk, device=q.device).unsqueeze(0) <= query_pos  # (Tq, Tk)
    out, lse = attention_with_lse(q, k, v, scale, mask)
    return out.to(q.dtype), lse
