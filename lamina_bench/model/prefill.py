"""Time of a serving iteration that may compute prefill tokens besides its decodes (scheduler `vllm`).

The decode part is `IterationModel`'s (model/iteration.py), unchanged. An iteration that also computes T
prefill tokens (prompt chunks, or the recompute of a preempted request), `pairs` (query, key) pairs of
causal attention over them (ops/prefill.py) and n prefills that complete (each samples one token) adds:

  homogeneous, TP over N: the prefill rows join the decode rows in the same GEMMs, so the extra dense
      time is the difference L [layer(B + T) - layer(B)] + head(B + n) - head(B), where layer(x) is one
      layer's dense part and its two all-reduces for x rows; plus L prefill_attention(T, pairs) with the
      device's share of the heads (num_heads / N query heads, max(1, kv_heads / N) KV heads).
  Lamina: the prefill runs on one compute replica (TP over Nc / R devices), whose KV goes to the attention
      pool: compute = L [layer(T) + prefill_attention(T, pairs)] + head(n); the chunk's KV (T x
      kv_bytes_per_token) streams to the attention pool layer by layer over the pool link, so
      t = max(compute, transfer) + transfer / L + link latency. It runs after the iteration's decodes
      (which need no compute pool when there are none): the pipeline does not hide it (assumed; an upper
      bound, as the compute pool idles part of each decode cycle).

An iteration without decodes runs no decode attention (homogeneous) and no decode pipeline (Lamina).
Every iteration also pays the scheduler's CPU overhead (model/scheduler.py) for the requests it schedules.
Prefill attention: the calibrated operator model (ops/prefill.py) where the device has no profile, else
the roofline of the device's datasheet peaks (flops and bytes as in ops/prefill.py, the roofline's
attention efficiencies and launch overhead, model/roofline.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lamina_bench.catalog.models import DTYPE_BYTES, kv_bytes_per_token
from lamina_bench.errors import UserInputError
from lamina_bench.model.iteration import IterationBreakdown, IterationModel
from lamina_bench.model.operators import DeviceModel
from lamina_bench.model.ops.constants import EAGER_LAUNCH_S
from lamina_bench.model.ops.device import elem_bytes
from lamina_bench.model.ops.prefill import (
    PREFILL_FLOPS_EFFICIENCY,
    TILE_M,
    prefill_attention_bytes,
    prefill_attention_flops,
    prefill_attention_time_s,
)
from lamina_bench.model.roofline import (
    ATTENTION_BW_EFFICIENCY,
    ATTENTION_FLOPS_EFFICIENCY,
    ATTENTION_LAYER_OVERHEAD_S,
)
from lamina_bench.model.scheduler import Scheduler


def prefill_attention_layer_s(dm: DeviceModel, spec, dtype: str, tokens, pairs, tp: int) -> np.ndarray:
    """One layer's prefill attention on one of `tp` devices that split the heads."""
    heads = spec.num_heads / tp
    kv_heads = max(1.0, spec.num_kv_heads / tp)
    tokens, pairs = np.asarray(tokens, dtype=float), np.asarray(pairs, dtype=float)
    if dm.profile is None and dm.ops is not None:
        return prefill_attention_time_s(dm.ops, tokens, pairs, heads, kv_heads, spec.head_dim, dtype)
    dev = dm.device
    if dev is None or dev.bf16_flops_per_s is None or dev.mem_bandwidth_bytes_per_s is None:
        raise UserInputError(
            f"prefill attention on {dm.name} needs its datasheet flops and bandwidth (profile "
            f"{dm.profile_name} has no prefill points); use a catalog device"
        )
    nbytes = prefill_attention_bytes(tokens, pairs, heads, kv_heads, spec.head_dim, DTYPE_BYTES[dtype])
    flops = prefill_attention_flops(pairs, heads, spec.head_dim)
    t = ATTENTION_LAYER_OVERHEAD_S + np.maximum(
        nbytes / (dev.mem_bandwidth_bytes_per_s * ATTENTION_BW_EFFICIENCY),
        flops / (dev.bf16_flops_per_s * ATTENTION_FLOPS_EFFICIENCY),
    )
    return np.where(tokens > 0, t, 0.0)


def prefill_attention_line(dm: DeviceModel, spec, dtype: str, tp: int):
    """`prefill_attention_layer_s` for tokens > 0 as five floats (fixed, per_token, per_pair, flops_per_pair,
    floor): t = max(fixed + max(per_token T + per_pair pairs, flops_per_pair pairs), floor), the same terms
    (float rounding aside) on both paths; None where the exact function raises (no specs)."""
    heads, kv_heads = spec.num_heads / tp, max(1.0, spec.num_kv_heads / tp)
    per_byte, tile = DTYPE_BYTES[dtype] * spec.head_dim, TILE_M.value
    flops_per_pair = 4.0 * heads * spec.head_dim
    if dm.profile is None and dm.ops is not None:  # ops/prefill.py in the model's execution mode
        gpu = dm.ops
        a = gpu.constants.values("attention")
        bw, flops_s = gpu.hw.mem_bw * a["eta"], gpu.hw.flops * PREFILL_FLOPS_EFFICIENCY.value
        fixed = a["t_fixed_s"] + (0.0 if gpu.mode == "kernel" else gpu.graph_gap_s)
        floor = EAGER_LAUNCH_S.value if gpu.mode == "eager" else 0.0
        per_byte = elem_bytes(dtype) * spec.head_dim
    else:
        dev = dm.device
        if dev is None or dev.bf16_flops_per_s is None or dev.mem_bandwidth_bytes_per_s is None:
            return None
        bw = dev.mem_bandwidth_bytes_per_s * ATTENTION_BW_EFFICIENCY
        flops_s = dev.bf16_flops_per_s * ATTENTION_FLOPS_EFFICIENCY
        fixed, floor = ATTENTION_LAYER_OVERHEAD_S, 0.0
    per_token = per_byte * (2.0 * heads + 2.0 * kv_heads) / bw
    per_pair = per_byte * 2.0 * kv_heads / tile / bw
    return float(fixed), float(per_token), float(per_pair), float(flops_per_pair / flops_s), float(floor)


@dataclass(frozen=True)
class ServingIterationModel:
    """Iteration time with prefill and CPU overhead on top of a decode `IterationModel` (module doc)."""

    base: IterationModel
    policy: Scheduler

    def _layer(self, rows) -> np.ndarray:
        """One layer's dense part and its two all-reduces for `rows` token rows on one replica."""
        b = self.base
        spec, e = b.model, DTYPE_BYTES[b.dtype]
        dense = b.compute.dense_layer(spec, b.dtype, rows, b.tp).time_s
        return (
            dense
            + 2.0 * b.compute.allreduce(np.asarray(rows, dtype=float) * spec.hidden_size * e, b.tp).time_s
        )

    def _head(self, rows) -> np.ndarray:
        b = self.base
        return b.compute.head(b.model, b.dtype, rows, b.tp).time_s

    def breakdown(self, batch, sum_context, prefill_tokens, prefill_pairs, prefill_seqs, first_tokens):
        """`IterationBreakdown` of iterations with `batch` decodes reading `sum_context` keys and the given
        prefill work (arrays broadcast; module doc)."""
        arrays = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in (
            batch, sum_context, prefill_tokens, prefill_pairs, prefill_seqs, first_tokens)))  # fmt: skip
        shape = arrays[0].shape
        batch, context, tokens, pairs, seqs, first = (np.ravel(x) for x in arrays)
        b = self.base
        lamina = b.system == "lamina"
        bd = b.breakdown(batch, context)
        parts = {k: np.array(getattr(bd, k), dtype=float) for k in
                 ("time_s", "dense_s", "attention_s", "network_s", "compute_busy_s", "attention_busy_s")}  # fmt: skip
        idle = batch == 0  # no decodes: no decode attention (homogeneous), no decode pipeline (Lamina)
        if lamina:
            for value in parts.values():
                value[idle] = 0.0
        else:
            for key in ("time_s", "compute_busy_s", "attention_busy_s"):
                parts[key][idle] -= parts["attention_s"][idle]
            parts["attention_s"][idle] = 0.0
        idx = np.flatnonzero(tokens > 0)
        if len(idx):
            extra = self._lamina_prefill(*(x[idx] for x in (tokens, pairs, first))) if lamina else \
                self._tp_prefill(*(x[idx] for x in (batch, tokens, pairs, first)))  # fmt: skip
            for key, value in extra.items():
                parts[key][idx] += value
        parts["time_s"] += self.policy.cpu_overhead(batch + seqs)
        return IterationBreakdown(**{k: v.reshape(shape) for k, v in parts.items()})

    def time_s(self, batch, sum_context, prefill_tokens, prefill_pairs, prefill_seqs, first_tokens):
        return self.breakdown(
            batch, sum_context, prefill_tokens, prefill_pairs, prefill_seqs, first_tokens
        ).time_s

    def _tp_prefill(self, batch, tokens, pairs, first) -> dict[str, np.ndarray]:
        b = self.base
        L = b.model.num_layers
        dense = (
            L * (self._layer(batch + tokens) - self._layer(batch))
            + self._head(batch + first)
            - self._head(batch)
        )
        attn = L * prefill_attention_layer_s(b.compute, b.model, b.dtype, tokens, pairs, b.tp)
        total = dense + attn
        return {"time_s": total, "dense_s": dense, "attention_s": attn, "compute_busy_s": total,
                "attention_busy_s": total}  # fmt: skip

    def _lamina_prefill(self, tokens, pairs, first) -> dict[str, np.ndarray]:
        b = self.base
        spec, L = b.model, b.model.num_layers
        dense = L * self._layer(tokens) + self._head(first)
        attn = L * prefill_attention_layer_s(b.compute, spec, b.dtype, tokens, pairs, b.tp)
        compute = dense + attn
        lat_c, bw_c, _ = b.compute.nic()
        lat_a, bw_a, _ = b.attention.nic()
        bandwidth = min(b.tp * bw_c, b.attention_count * bw_a)
        transfer = tokens * kv_bytes_per_token(spec, b.dtype) / bandwidth
        total = np.maximum(compute, transfer) + transfer / L + max(lat_c, lat_a)
        # the compute pool's prefill (dense and attention) is its MTIME-like part; one of R replicas runs it
        return {
            "time_s": total,
            "dense_s": compute,
            "network_s": transfer,
            "compute_busy_s": compute / b.replicas,
        }
