"""Mixture-of-experts and latent-attention arithmetic of one decode step: routing, expert GEMMs, MLA.

Routing (top-k over E experts, B tokens). With uniform routing every token picks k distinct experts, each
expert with probability k / E, independently of the other tokens, so the tokens an expert receives are

    n_j ~ Binomial(B, k / E),  mean B k / E,  and an expert is active (n_j > 0) with P = 1 - (1 - k / E)^B.

Under expert parallelism over N devices holding E / N experts each, the token copies a device receives
are a sum over tokens of Hypergeometric(E, E / N, k) draws: mean B k / N, variance
B k (1/N)(1 - 1/N)(E - k)/(E - 1). The layer waits for the most loaded device; its expected load is
bounded by mean + sigma sqrt(2 ln N) (the bound on the expected maximum of N Gaussians with that mean
and sigma; treating the devices as independent over-states it slightly). A routing `skew` s >= 1
multiplies the mean load of that device (s = 1: uniform routing; s = 1.3: the hottest device gets 30%
more than its share), a parameter rather than a measured figure.

Expert GEMMs. An expert is a SwiGLU FFN: up (m t, n 2 I, k d, gate and up fused) and down (m t, n d,
k I) for the t tokens it received; only active experts read their weights. One grouped-GEMM kernel per
projection runs every active expert of a device (vLLM's fused MoE, DeepSeek's DeepGEMM): its bytes are
the sum over experts of gemm.gemm_bytes and its flops the sum of each expert's tiled flops, timed with
the same calibrated constants as one GEMM (`grouped_gemm_time_s`; groups = 1 is gemm.gemm_time_s).

MLA decode attention with absorbed weights (DeepSeek-V2 arXiv 2405.04434 Sec. 2.1.2; FlashMLA): every
head attends over the same cached latent c and RoPE key r of each token, so one layer for B sequences
reading S context tokens in all moves

    bytes = e (S (c + r) + B H (c + r) + B H c)      latent read once; query in (c + r) and output (c)
    flops = 2 H (2 c + r) S                           q.k over c + r, p.v over c, per head and token

The absorbed projections (W_UK into the query, W_UV into the output) are ordinary GEMMs with the same
multiply-adds as kv_b_proj, counted with the other attention weights (catalog.moe.attention_params).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from lamina_bench.model.ops.constants import GEMM_TILE_M, GEMM_TILE_N
from lamina_bench.model.ops.gemm import gemm_bytes, tiles
from lamina_bench.model.ops.hardware import Hardware

# ---- routing -----------------------------------------------------------------------------------------


def tokens_per_expert(batch, num_experts: int, top_k: int) -> np.ndarray:
    """Expected tokens each expert receives under uniform routing: B k / E."""
    return np.asarray(batch, dtype=float) * top_k / num_experts


def active_experts(batch, num_experts: int, top_k: int) -> np.ndarray:
    """Expected experts that receive at least one of B tokens: E (1 - (1 - k / E)^B)."""
    batch = np.asarray(batch, dtype=float)
    return num_experts * (1.0 - (1.0 - top_k / num_experts) ** batch)


def device_load(batch, num_experts: int, top_k: int, devices: int, skew: float = 1.0) -> np.ndarray:
    """Token copies the most loaded of `devices` expert-parallel devices receives (module doc):
    skew * B k / N + sigma sqrt(2 ln N), at most B * min(k, experts per device)."""
    batch = np.asarray(batch, dtype=float)
    mean = batch * top_k / devices
    if devices == 1:
        return mean * skew
    share = 1.0 / devices
    var = batch * top_k * share * (1.0 - share) * (num_experts - top_k) / max(num_experts - 1, 1)
    load = skew * mean + np.sqrt(var) * np.sqrt(2.0 * np.log(devices))
    per_device = -(-num_experts // devices)
    return np.minimum(load, batch * min(top_k, per_device))


def device_active_experts(copies, experts_here: int) -> np.ndarray:
    """Expected active experts of a device holding `experts_here` experts that receives `copies` token
    copies spread uniformly over them: n (1 - (1 - 1/n)^copies), with copies as a real number."""
    copies = np.asarray(copies, dtype=float)
    if experts_here == 1:
        return np.where(copies > 0, 1.0, 0.0)
    return experts_here * (1.0 - (1.0 - 1.0 / experts_here) ** copies)


# ---- expert GEMMs ------------------------------------------------------------------------------------


def expert_gemms(copies, experts: np.ndarray | float, hidden: int, width: int):
    """The two grouped GEMMs of `experts` active experts sharing `copies` token copies:
    [(groups, m, n, k)] for up (gate + up fused) and down, m the tokens per active expert."""
    copies = np.asarray(copies, dtype=float)
    experts = np.asarray(experts, dtype=float)
    m = np.where(experts > 0, copies / np.maximum(experts, 1e-30), 0.0)
    return [(experts, m, 2.0 * width, float(hidden)), (experts, m, float(hidden), float(width))]


def expert_bytes_moved(copies, experts, hidden: int, width: int, elem_bytes: float = 2.0) -> np.ndarray:
    """Bytes of the expert GEMMs: active experts' weights 3 d I e plus e (2 d + 3 I) per token copy."""
    return sum(
        g * gemm_bytes(m, n, k, elem_bytes) for g, m, n, k in expert_gemms(copies, experts, hidden, width)
    )


def expert_flops(copies, hidden: int, width: int) -> np.ndarray:
    """Flops of the expert GEMMs: 2 * 3 d I per token copy (one multiply-add per weight; untiled)."""
    return 6.0 * hidden * width * np.asarray(copies, dtype=float)


def grouped_gemm_time_s(
    g: Mapping[str, float], hw: Hardware, groups, m, n, k, elem_bytes: float = 2.0
) -> np.ndarray:
    """One grouped-GEMM kernel over `groups` GEMMs of (m, n, k): gemm.gemm_time_s's formula (no L2 reuse)
    with the bytes and the tiled flops of every group; `groups` may be fractional (an expected count)."""
    groups = np.asarray(groups, dtype=float)
    nbytes = groups * gemm_bytes(m, n, k, elem_bytes)
    dram = hw.mem_bw * g["eta_mem"]
    t_mem = (nbytes + g["ramp_bytes"]) / dram
    m_q, n_q = tiles(m, GEMM_TILE_M.value), tiles(n, GEMM_TILE_N.value)
    t_cmp = groups * 2.0 * m_q * n_q * np.asarray(k, dtype=float) / (hw.flops * g["eta_cmp"])
    q = g["q"]
    return g["t_fixed_s"] + (t_mem**q + t_cmp**q) ** (1.0 / q)


# ---- multi-head latent attention ----------------------------------------------------------------------


def mla_attention_bytes(batch, sum_context, heads: int, latent: int, rope: int, elem_bytes: float = 2.0):
    """Bytes of one layer's absorbed MLA decode attention (module doc)."""
    batch, sum_context = np.asarray(batch, dtype=float), np.asarray(sum_context, dtype=float)
    return elem_bytes * (sum_context * (latent + rope) + batch * heads * (2 * latent + rope))


def mla_attention_flops(sum_context, heads: int, latent: int, rope: int) -> np.ndarray:
    """Flops of one layer's absorbed MLA decode attention: 2 H (2 c + r) per context token."""
    return 2.0 * heads * (2 * latent + rope) * np.asarray(sum_context, dtype=float)


# ---- expert-parallel token exchange ------------------------------------------------------------------


def all_to_all_send_bytes(nbytes, world: int) -> np.ndarray:
    """Bytes one rank sends in an all-to-all of `nbytes` spread evenly over `world` ranks: (N - 1)/N of it
    (its own share stays local)."""
    return np.asarray(nbytes, dtype=float) * (world - 1) / world
