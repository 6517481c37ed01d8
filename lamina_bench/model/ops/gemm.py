"""GEMM/GEMV and elementwise kernel times, and what a sequence of kernels costs per execution mode.

GEMM y = x W^T with x (m x k), W (n x k), elements of e bytes (every array argument broadcasts):

    bytes  = e (m k + n k + m n)                         activations in, weights, activations out
    t_mem  = ((1 - h) bytes + ramp_bytes) / (B eta_mem)  bandwidth ramp: B_eff(s) = B eta_mem s / (s + ramp_bytes)
             + h bytes / max(SMs l2_bw_per_sm, B eta_mem)   h: share served by the L2 (cache.py), 0 in serving
    t_cmp  = 2 m_q n_q k / (F eta_cmp)                   m_q = ceil(m / 64) 64, n_q = ceil(n / 128) 128 (whole tiles)
    t      = t_fixed + (t_mem^q + t_cmp^q)^(1/q)         q >= 1: a smooth max (q = 1 adds, q -> inf is the max)

B and F are the datasheet peaks (memory bandwidth, dense bf16 flop/s); t_fixed, eta_mem, ramp_bytes,
eta_cmp, q and l2_bw_per_sm are fitted per GPU (calibration.py). The ramp is a memory pipeline that needs
`ramp_bytes` in flight before it streams at full rate; with few bytes a GEMV is latency-bound. h > 0 only
when a working set `ws_bytes` is given (a benchmark that re-reads the same weights call after call).

Elementwise kernels (RMSNorm, rotary embedding, SiLU-and-mul, residual add) launch one CTA per token
row that loops over the row, so their floor grows with the row width w (elements):

    t = t_op + per_width w + bytes / (B eta_el)          t_op per kind (norm, rope, act, add)

Execution modes (what a measured time covers; what the simulator charges per kernel):
    kernel  GPU kernel duration only (profiler traces, e.g. Vidur's Kineto times)
    graph   + graph_gap per kernel (the gap between kernels replayed in a CUDA graph; fitted per GPU as
            the difference between CUDA-graph and kernel-only timings of the same GPU)
    eager   + graph_gap per kernel, and never less than one host launch per kernel (EAGER_LAUNCH_S):
            the CPU enqueues kernels one by one, so a sequence of short kernels is launch-bound
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from lamina_bench.errors import UserInputError
from lamina_bench.model.ops.cache import l2_hit_share
from lamina_bench.model.ops.constants import EAGER_LAUNCH_S, GEMM_TILE_M, GEMM_TILE_N
from lamina_bench.model.ops.hardware import Hardware

MODES = ("kernel", "graph", "eager")
ELEMENTWISE_OPS = ("norm", "rope", "act", "add")

GEMM_CONSTANTS = ("t_fixed_s", "eta_mem", "ramp_bytes", "eta_cmp", "q", "l2_bw_per_sm")
ELEMENTWISE_CONSTANTS = ("t_norm_s", "t_rope_s", "t_act_s", "t_add_s", "per_width_s", "eta_el")
MODE_CONSTANTS = ("graph_gap_s",)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise UserInputError(f"unknown execution mode {mode!r}; valid: {', '.join(MODES)}")
    return mode


def tiles(x, tile: float) -> np.ndarray:
    """`x` rounded up to whole tiles: the work a tiled kernel does (m = 65 with 64-row tiles -> 128)."""
    return np.ceil(np.asarray(x, dtype=float) / tile) * tile


def gemm_bytes(m, n, k, elem_bytes: float = 2.0) -> np.ndarray:
    m, n, k = (np.asarray(v, dtype=float) for v in (m, n, k))
    return elem_bytes * (m * k + n * k + m * n)


def gemm_time_s(
    g: Mapping[str, float], hw: Hardware, m, n, k, elem_bytes: float = 2.0, ws_bytes=None
) -> np.ndarray:
    """Kernel time of one GEMM (module doc); `g` holds GEMM_CONSTANTS; `ws_bytes` the working set re-read
    call after call (None in serving: no L2 hits)."""
    nbytes = gemm_bytes(m, n, k, elem_bytes)
    dram = hw.mem_bw * g["eta_mem"]
    if ws_bytes is None:  # no reuse: every byte from DRAM
        t_mem = (nbytes + g["ramp_bytes"]) / dram
    else:
        hit = l2_hit_share(ws_bytes, hw.l2_bytes)
        t_mem = ((1.0 - hit) * nbytes + g["ramp_bytes"]) / dram
        t_mem = t_mem + hit * nbytes / max(hw.sms * g["l2_bw_per_sm"], dram)
    m_q, n_q = tiles(m, GEMM_TILE_M.value), tiles(n, GEMM_TILE_N.value)
    t_cmp = 2.0 * m_q * n_q * np.asarray(k, dtype=float) / (hw.flops * g["eta_cmp"])
    q = g["q"]
    return g["t_fixed_s"] + (t_mem**q + t_cmp**q) ** (1.0 / q)


def elementwise_time_s(e: Mapping[str, float], hw: Hardware, op: str, width, nbytes) -> np.ndarray:
    """Kernel time of one row-per-CTA elementwise kernel of kind `op` (module doc)."""
    if op not in ELEMENTWISE_OPS:
        raise ValueError(f"unknown elementwise op {op!r}; valid: {ELEMENTWISE_OPS}")
    width, nbytes = np.asarray(width, dtype=float), np.asarray(nbytes, dtype=float)
    return e[f"t_{op}_s"] + e["per_width_s"] * width + nbytes / (hw.mem_bw * e["eta_el"])


def sequence_time_s(kernel_times: Sequence, mode: str, graph_gap_s: float) -> np.ndarray:
    """Time of kernels run back to back in `mode` (module doc)."""
    check_mode(mode)
    total = sum(np.asarray(t, dtype=float) for t in kernel_times)
    if mode == "kernel":
        return total
    total = total + graph_gap_s * len(kernel_times)
    if mode == "graph":
        return total
    return np.maximum(total, EAGER_LAUNCH_S.value * len(kernel_times))
