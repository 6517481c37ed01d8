"""L2 residency: the share of a kernel's bytes the L2 cache serves when the same data is read call after call.

A benchmark that replays one kernel on the same operands (or cycles through N copies of them) re-reads a
working set of ws bytes every call. While ws fits in the L2 (capacity C, the datasheet size,
hardware.l2_bytes), its lines are still there from the previous call and the call streams them at the
L2 rate; once it does not fit, LRU-like replacement under cyclic reuse evicts each line before its next
use and nearly every byte comes from DRAM (constants.L2_CLIFF rounds that cliff):

    hit(ws) = 1 / (1 + (ws / C)^L2_CLIFF)                       0 with no reuse or no published C
    t_bytes = bytes (1 - hit) / (B eta)  +  bytes hit / max(SMs l2_bw_per_sm, B eta)

l2_bw_per_sm is the rate at which one kernel family streams L2-resident bytes, per SM (GEMM and decode
attention each fit their own, calibration.py): the SMs pull the data, so a GPU that derives the constant
from another scales it by its own SM count. A hit is never slower than a miss: data read from DRAM
reaches the SMs through the same L2, so the hit rate is at least the DRAM rate (a GPU deriving a slow
L2 rate from an older part with less DRAM bandwidth keeps its own DRAM rate for hits).

Serving does not reuse like this: a decode step reads every layer's weights and the whole batch's KV once
per iteration, gigabytes between two reads of the same byte, far above any L2. The simulator therefore
passes no working set (hit = 0); only validation rows whose benchmark replays the same data declare one
(validate/files.py REUSE_RULES).
"""

from __future__ import annotations

import numpy as np

from lamina_bench.model.ops.constants import L2_CLIFF


def working_set(nbytes, copies: int) -> np.ndarray | None:
    """Bytes re-read call after call by a benchmark cycling through `copies` copies; None without reuse."""
    if copies <= 0:
        return None
    return copies * np.asarray(nbytes, dtype=float)


def l2_hit_share(ws_bytes, l2_bytes: float | None) -> np.ndarray:
    """Share of a call's bytes served by the L2 (module doc); 0 when `ws_bytes` or `l2_bytes` is None."""
    if ws_bytes is None or l2_bytes is None:
        return np.zeros(())
    ratio = np.asarray(ws_bytes, dtype=float) / l2_bytes
    return 1.0 / (1.0 + ratio**L2_CLIFF.value)


def streaming_time_s(nbytes, hit, dram_bw: float, l2_bw: float) -> np.ndarray:
    """Time to stream `nbytes` of which the share `hit` comes from the L2 (rates in bytes/s)."""
    nbytes, hit = np.asarray(nbytes, dtype=float), np.asarray(hit, dtype=float)
    return nbytes * (1.0 - hit) / dram_bw + nbytes * hit / max(l2_bw, dram_bw)
