"""Paged decode attention: one query token per sequence against its cached K and V.

For `batch` sequences of `context` cached tokens, `heads` query heads sharing `kv_heads` KV heads
(GQA) of `head_dim`, elements of e bytes:

    bytes  = batch context 2 kv_heads head_dim e  +  batch 2 heads head_dim e      (K, V; q in, out)
    splits = FlashAttention's split-KV heuristic (`fa_splits`) over batch kv_heads work items, the CTA
             slots (SMs ctas_per_sm) and ceil(context / chunk_tokens) KV blocks
    ctas   = batch kv_heads splits,  slots = SMs ctas_per_sm
    waves  = ceil(ctas / slots),     fill = ctas / (waves slots)     (share of the CTA slots that work)
    t_kv   = [(1 - h) bytes / (B eta) + h bytes / max(SMs l2_bw_per_sm, B eta)] / fill    (streaming K, V)
    t      = t_fixed + t_wave waves + ((t_item batch kv_heads)^q + t_kv^q)^(1/q)

Each CTA streams its share at the per-slot bandwidth B eta / slots, so too few CTAs (small batch, short
context) or a ragged last wave leave bandwidth unused (fill < 1). t_item is the cost of one work item, a
(sequence, KV head) pair: writing the new token's K and V, walking the page table, loading q and
writing the output; it runs alongside the streaming of other items, so the two combine as a smooth
max (q >= 1). t_wave is the latency a wave of CTAs pays before it streams. h is the share of the bytes
the L2 serves when a benchmark replays the same KV (cache.py; 0 in serving). t_fixed, t_item, t_wave,
eta, q, chunk_tokens, ctas_per_sm and l2_bw_per_sm are fitted per GPU (calibration.py); t_fixed is the kernel-only cost of the call (ATTENTION_KERNELS
kernels), and a CUDA graph adds its per-kernel gap (gemm.sequence_time_s).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import numpy as np

from lamina_bench.model.ops.cache import l2_hit_share, streaming_time_s
from lamina_bench.model.ops.hardware import Hardware

ATTENTION_CONSTANTS = (
    "t_fixed_s", "t_item_s", "t_wave_s", "eta", "q", "chunk_tokens", "ctas_per_sm", "l2_bw_per_sm",
)  # fmt: skip


def attention_bytes(batch, context, heads, kv_heads, head_dim, elem_bytes: float = 2.0) -> np.ndarray:
    batch, context = np.asarray(batch, dtype=float), np.asarray(context, dtype=float)
    heads, kv_heads = np.asarray(heads, dtype=float), np.asarray(kv_heads, dtype=float)
    return batch * elem_bytes * head_dim * (2.0 * context * kv_heads + 2.0 * heads)


MAX_SPLITS = 128


@lru_cache(maxsize=65536)
def fa_splits(work: int, slots: int, blocks: int, max_splits: int = MAX_SPLITS) -> int:
    """KV splits per (sequence, KV head): FlashAttention-2's num_splits_heuristic (Dao-AILab/flash-attention,
    csrc/flash_attn/flash_api.cpp). No split once the work items nearly fill the slots (>= 80%); else the
    smallest split count whose wave efficiency is >= 85% of the best, skipping counts that give the same
    blocks per split as one fewer.
    """
    if work >= 0.8 * slots:
        return 1
    top = min(max_splits, slots, blocks)
    per_split = [-(-blocks // s) for s in range(1, top + 1)]
    eff = []
    for s in range(1, top + 1):
        if s > 1 and per_split[s - 1] == per_split[s - 2]:
            eff.append(0.0)
            continue
        waves = work * s / slots
        eff.append(waves / np.ceil(waves))
    best = max(eff)
    return next(s for s, e in enumerate(eff, start=1) if e >= 0.85 * best)


def _splits(work: np.ndarray, blocks: np.ndarray, slots: int) -> np.ndarray:
    """fa_splits of every (work, blocks) pair: 1 where the work items nearly fill the slots, else one call
    per distinct pair (a replay asks for the same few pairs many times)."""
    splits = np.ones(work.shape)
    small = work < 0.8 * slots
    if small.any():
        stride = int(blocks.max()) + 1  # one integer key per (work, blocks) pair
        keys, inverse = np.unique(work[small] * stride + blocks[small], return_inverse=True)
        per_pair = np.array([fa_splits(int(k // stride), slots, int(k % stride)) for k in keys], dtype=float)
        splits[small] = per_pair[inverse.ravel()]
    return splits


def attention_waves(a: Mapping[str, float], hw: Hardware, batch, context, kv_heads):
    """(ctas, waves, fill) of the split-KV launch (module doc)."""
    batch, context = np.asarray(batch, dtype=float), np.asarray(context, dtype=float)
    seq_heads = np.maximum(batch * np.asarray(kv_heads, dtype=float), 1.0)
    slots = int(hw.sms * a["ctas_per_sm"])
    blocks = np.maximum(np.ceil(context / a["chunk_tokens"]), 1.0)
    work, blocks = np.broadcast_arrays(seq_heads, blocks)
    splits = _splits(work.ravel().astype(np.int64), blocks.ravel().astype(np.int64), slots).reshape(
        work.shape
    )
    ctas = seq_heads * splits
    waves = np.ceil(ctas / slots)
    return ctas, waves, ctas / (waves * slots)


def split_breaks(a: Mapping[str, float], hw: Hardware, batch: float, kv_heads: float, max_context: float):
    """Contexts at which one call's time may jump for `batch` sequences: the multiples of chunk_tokens up to
    `max_context` when the split count depends on the KV block count (too few work items to fill the CTA
    slots), else none. Between two of them the launch (splits, waves, fill) is fixed and the time is convex
    in the context (a smooth max of a constant and a linear term)."""
    work = int(max(batch * kv_heads, 1.0))  # as attention_waves counts the work items
    if work >= 0.8 * int(hw.sms * a["ctas_per_sm"]):  # fa_splits: one split whatever the blocks
        return np.zeros(0)
    chunk = a["chunk_tokens"]
    return chunk * np.arange(1, int(np.ceil(max_context / chunk)) + 1)


def attention_time_s(
    a: Mapping[str, float], hw: Hardware, batch, context, heads, kv_heads, head_dim, elem_bytes: float = 2.0,
    ws_bytes=None,
) -> np.ndarray:  # fmt: skip
    """Kernel-only time of one decode-attention call (module doc); `a` holds ATTENTION_CONSTANTS; `ws_bytes`
    the working set a benchmark re-reads call after call (None in serving: no L2 hits)."""
    _, waves, fill = attention_waves(a, hw, batch, context, kv_heads)
    nbytes = attention_bytes(batch, context, heads, kv_heads, head_dim, elem_bytes)
    dram = hw.mem_bw * a["eta"]
    if ws_bytes is None:  # no reuse: every byte from DRAM
        t_kv = nbytes / (dram * fill)
    else:
        hit = l2_hit_share(ws_bytes, hw.l2_bytes)
        t_kv = streaming_time_s(nbytes, hit, dram, hw.sms * a["l2_bw_per_sm"]) / fill
    t_items = a["t_item_s"] * np.asarray(batch, dtype=float) * np.asarray(kv_heads, dtype=float)
    q = a["q"]
    return a["t_fixed_s"] + a["t_wave_s"] * waves + (t_items**q + t_kv**q) ** (1.0 / q)
