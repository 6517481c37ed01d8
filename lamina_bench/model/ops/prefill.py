"""Prefill (causal flash) attention: the new tokens of prompt chunks against their cached prefix.

A chunk of c new tokens of a sequence whose first q tokens are already cached attends c q + c (c + 1) / 2
(query, key) pairs per head: every new token sees the cached prefix and the chunk's tokens up to itself.
For an iteration's chunks together (`tokens` new tokens, `pairs` summed over the chunks), `heads` query
heads sharing `kv_heads` KV heads of `head_dim`, elements of e bytes:

    flops = 4 heads head_dim pairs                                   QK^T and PV, 2 flops per multiply-add
    bytes = e head_dim (2 heads tokens + 2 kv_heads (tokens + pairs / TILE_M))
                                                   q in and output out; K and V of the new tokens written,
                                                   and K, V read once per TILE_M-row query tile
    t     = t_fixed + max(flops / (F eta_prefill), bytes / (B eta))

On the calibrated operator model, t_fixed (the attention call's fixed cost) and eta (its share of memory
bandwidth) are the GPU's fitted decode-attention constants, and the call runs in the model's execution
mode; no calibration file times a prefill kernel, so eta_prefill and TILE_M are assumptions (below).
The roofline path (model/prefill.py) uses the same flops and bytes with the roofline's constants.
"""

from __future__ import annotations

import numpy as np

from lamina_bench.model.ops.constants import Constant
from lamina_bench.model.ops.device import GpuModel, elem_bytes
from lamina_bench.model.ops.gemm import sequence_time_s

# FlashAttention-2/3 forward kernels reach 50-75% of the bf16 dense peak on A100/H100 at long sequences
# (Dao 2023, arXiv 2307.08691: up to 73% on A100; Shah et al. 2024, arXiv 2407.08608: 75% on H100 with
# FA3) and less for causal masks and 1-8k-token sequences, the serving regime: 0.5 is taken.
PREFILL_FLOPS_EFFICIENCY = Constant(
    0.5, "assumed", "FlashAttention-2/3 forward at 50-75% of bf16 peak on A100/H100 (arXiv 2307.08691, "
    "2407.08608); causal, 1-8k tokens at the low end", "2026-12",
)  # fmt: skip
# Query rows per CTA of FlashAttention-2's forward kernel for head_dim 128 (Br = 128; arXiv 2307.08691).
TILE_M = Constant(128, "assumed", "FlashAttention-2 forward query tile Br = 128 for head_dim 128", "2026-12")


def prefill_attention_flops(pairs, heads, head_dim) -> np.ndarray:
    return 4.0 * np.asarray(heads, dtype=float) * head_dim * np.asarray(pairs, dtype=float)


def prefill_attention_bytes(tokens, pairs, heads, kv_heads, head_dim, elem: float = 2.0) -> np.ndarray:
    tokens, pairs = np.asarray(tokens, dtype=float), np.asarray(pairs, dtype=float)
    kv_rows = tokens + pairs / TILE_M.value
    return elem * head_dim * (2.0 * heads * tokens + 2.0 * kv_heads * kv_rows)


def prefill_attention_time_s(
    gpu: GpuModel, tokens, pairs, heads, kv_heads, head_dim, dtype: str = "bf16"
) -> np.ndarray:
    """One layer's prefill attention on `gpu` (module doc); 0 where `tokens` is 0."""
    a = gpu.constants.values("attention")
    e = elem_bytes(dtype)
    t_cmp = prefill_attention_flops(pairs, heads, head_dim) / (gpu.hw.flops * PREFILL_FLOPS_EFFICIENCY.value)
    t_mem = prefill_attention_bytes(tokens, pairs, heads, kv_heads, head_dim, e) / (gpu.hw.mem_bw * a["eta"])
    t = sequence_time_s([a["t_fixed_s"] + np.maximum(t_cmp, t_mem)], gpu.mode, gpu.graph_gap_s)
    return np.where(np.asarray(tokens) > 0, t, 0.0)
