"""Time of one decode iteration of a system, composed from the devices' operator models.

Timing of one iteration with B running requests and S summed context tokens:
  homogeneous, TP over N devices: L * (dense(B) + 2 all-reduces + attention(B, S) on 1/N of the KV) + head.
  Lamina, n pipelined batches on R = max(1, n - 1) compute replicas of Nc/R devices each (arXiv
  2405.01814 v2, rotational staggered pipelining; n = 2 is ping-pong, n = 1 no overlap), micro-batch
  b = B/n, per layer t_m = dense(b) + all-reduces, t_a = attention(b, S/n) on Na devices,
  t_n = link round trip. A layer's cycle is the slowest of: the compute replicas (n * t_m / R), the
  attention pool (n * t_a), one micro-batch's dependency chain (t_m + t_a + t_n) and the link's
  bandwidth (n * bytes / bandwidth); an iteration is L cycles plus the model head.
Mixture-of-experts models (and AFD, which only they have) are timed by model/moe_iteration.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from lamina_bench.catalog.models import (
    DTYPE_BYTES,
    ModelSpec,
    net_bytes_per_token_per_layer,
    same_layer_shape,
)
from lamina_bench.catalog.moe import is_moe
from lamina_bench.model.breakdown import IterationBreakdown
from lamina_bench.model.moe_iteration import MoEIterationModel
from lamina_bench.model.operators import DeviceModel, device_model
from lamina_bench.model.profiles import Profile
from lamina_bench.model.system import SystemConfig


@dataclass(frozen=True)
class IterationModel:
    """Time of one decode iteration of a system; the devices' operator models are composed here."""

    model: ModelSpec
    dtype: str
    system: str
    compute_count: int
    attention_count: int  # homogeneous: = compute_count (the same devices)
    pipeline_batches: int
    compute: DeviceModel
    attention: DeviceModel
    calibrate_steps: bool = True  # use the compute profile's measured whole steps (see _step_fit)

    @property
    def replicas(self) -> int:
        return max(1, self.pipeline_batches - 1) if self.system == "lamina" else 1

    @cached_property
    def _step_fit(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(batches, costs [s]) of what the operator composition does not explain, from the compute
        profile's measured whole decode steps of this system on one device (homogeneous engine) or one
        compute + one attention worker without pipelining (Lamina runtime): cost = measured step - this
        model's step without the term (per iteration; per layer for Lamina), clamped at 0, interpolated
        linearly in batch (held constant outside the measured batches). None without such steps or for
        another device's profile (derived).
        """
        prof = self.compute.profile
        if not self.calibrate_steps or prof is None or self.compute.derived:
            return None
        same_model = (
            same_layer_shape(self.model, prof.model) and self.model.num_layers == prof.model.num_layers
        )
        if not same_model or self.dtype != prof.dtype or self.attention.profile is not prof:
            return None  # the residual belongs to the profiled model, dtype and device only
        points = sorted(
            prof.lamina_steps if self.system == "lamina" else prof.engine_steps, key=lambda p: p.batch
        )
        if not points:
            return None
        base = replace(self, compute_count=1, attention_count=1, pipeline_batches=1, calibrate_steps=False)
        batch = np.array([p.batch for p in points], dtype=float)
        context = np.array([p.batch * p.context_len for p in points], dtype=float)
        residual = np.array([p.time_s for p in points]) - base.time_s(batch, context)
        if self.system == "lamina":
            residual = residual / self.model.num_layers
        return batch, np.maximum(residual, 0.0)

    def _step_cost_s(self, batch: np.ndarray) -> np.ndarray | float:
        fit = self._step_fit
        return 0.0 if fit is None else np.interp(batch, *fit)

    @property
    def tp(self) -> int:
        return self.compute_count // self.replicas

    @cached_property
    def _nic(self) -> tuple[float, float, float]:
        """(latency_s, per-replica bandwidth, whole-pool bandwidth) of the compute <-> attention link."""
        lat_c, bw_c, _ = self.compute.nic()
        lat_a, bw_a, _ = self.attention.nic()
        per_replica = min(self.tp * bw_c, self.attention_count * bw_a)
        pool = min(self.compute_count * bw_c, self.attention_count * bw_a)
        return max(lat_c, lat_a), per_replica, pool

    def _tp_layer(self, batch) -> np.ndarray:
        """Dense part of one layer incl. its two all-reduces (after attention-out and after the MLP)."""
        spec, e = self.model, DTYPE_BYTES[self.dtype]

        def layer(b):
            dense = self.compute.dense_layer(spec, self.dtype, b, self.tp).time_s
            return dense + 2.0 * self.compute.allreduce(b * spec.hidden_size * e, self.tp).time_s

        return self._per_batch("layer", layer, batch)

    def _head(self, batch) -> np.ndarray:
        return self._per_batch(
            "head", lambda b: self.compute.head(self.model, self.dtype, b, self.tp).time_s, batch
        )

    @cached_property
    def _memo(self) -> dict[str, dict[float, float]]:
        return {}

    @cached_property
    def tables(self) -> dict:
        """Tables derived from this model, kept for its life (model/serving_time.py: a capacity search
        replays one model at many rates)."""
        return {}

    def _per_batch(self, name: str, fn, batch) -> np.ndarray:
        """fn(batch) element by element, each distinct batch size computed once for the life of this model
        (a replay asks for the same sizes again and again, often one at a time)."""
        x = np.asarray(batch, dtype=float)
        memo = self._memo.setdefault(name, {})
        small = x.size > 64 and x.min(initial=0.0) >= 0 and x.max(initial=0.0) < 1 << 20
        whole = x.astype(np.int64) if small else None
        if small and np.array_equal(whole, x):  # whole batch sizes (a replay's): a lookup table, no sort
            values = np.flatnonzero(np.bincount(whole.ravel())).astype(float)
        else:
            values, inverse = np.unique(x, return_inverse=True)
            whole = None
        missing = [v for v in values.tolist() if v not in memo]
        if missing:
            times = np.broadcast_to(fn(np.array(missing)), (len(missing),)).tolist()
            memo.update(zip(missing, times, strict=True))
        if whole is not None:
            lookup = np.zeros(int(values[-1]) + 1)
            lookup[values.astype(np.int64)] = [memo[v] for v in values.tolist()]
            return lookup[whole]
        return np.array([memo[v] for v in values.tolist()])[inverse.reshape(x.shape)]

    def breakdown(self, batch, sum_context) -> IterationBreakdown:
        """Iteration time and its parts for `batch` running requests reading `sum_context` tokens."""
        batch = np.asarray(batch, dtype=float)
        sum_context = np.asarray(sum_context, dtype=float)
        if self.system == "homogeneous":
            return self._homogeneous(batch, sum_context)
        return self._lamina(batch, sum_context)

    def _homogeneous(self, batch: np.ndarray, sum_context: np.ndarray) -> IterationBreakdown:
        """Dense part, all-reduces and attention one after the other on the same TP group."""
        spec, L = self.model, self.model.num_layers
        kv_share = max(1.0 / self.compute_count, 1.0 / spec.num_kv_heads)
        t_m = self._tp_layer(batch)
        t_a = self.compute.attention_layer(spec, self.dtype, batch, sum_context, kv_share).time_s
        head = self._head(batch)
        dense, attn = L * t_m + head, L * t_a
        time = dense + attn + self.compute.iteration_overhead_s + self._step_cost_s(batch)
        return IterationBreakdown(time, dense, attn, np.zeros_like(time), time, time)

    def _lamina(self, batch: np.ndarray, sum_context: np.ndarray) -> IterationBreakdown:
        """n micro-batches pipelined over R compute replicas and the attention pool (module doc)."""
        spec, L, e = self.model, self.model.num_layers, DTYPE_BYTES[self.dtype]
        n, r = self.pipeline_batches, self.replicas
        b, s = batch / n, sum_context / n
        t_m = self._tp_layer(b)
        t_a = self.attention.attention_layer(spec, self.dtype, b, s, 1.0 / self.attention_count).time_s
        head = self._head(b)
        latency_s, bw_replica, bw_pool = self._nic
        round_trip_bytes = b * net_bytes_per_token_per_layer(spec, self.dtype)
        send_bytes = b * e * (spec.q_size + 2 * spec.kv_size)  # q, k, v out: the larger direction
        t_n = 2.0 * latency_s + round_trip_bytes / bw_replica
        # measured per-layer exchange cost (message handling): busy time on both pools, not overlappable,
        # paid once per non-empty micro-batch
        x = self._step_cost_s(b)
        busy_x = np.minimum(n, np.maximum(batch, 1.0)) * x
        cycle = np.maximum(
            np.maximum((n * t_m + busy_x) / r, n * t_a + busy_x),
            np.maximum(t_m + t_a + t_n + x, n * send_bytes / bw_pool),
        )
        time = L * cycle + n * head / r + self.compute.iteration_overhead_s
        return IterationBreakdown(
            time, L * t_m + head, L * t_a, L * t_n, (L * n * t_m + n * head) / r, L * n * t_a
        )

    def time_s(self, batch, sum_context) -> np.ndarray:
        return self.breakdown(batch, sum_context).time_s

    def decode_breaks(self, batch: int, max_context: float) -> np.ndarray:
        """Summed contexts S (integers) after which the time of `batch` decodes may jump: S and S + 1 lie on
        either side of a step of the attention launch (`DeviceModel.attention_breaks`). Between two of them
        the time is convex in S: sums and maxima of terms convex in S."""
        if self.system == "homogeneous":  # attention over `batch` sequences at context S / batch
            kv, calls, per_call = max(1.0 / self.compute_count, 1.0 / self.model.num_kv_heads), batch, 1
            dm = self.compute
        else:  # n micro-batches of batch / n sequences at context (S / n) / max(batch / n, 1)
            kv, calls, per_call = (
                1.0 / self.attention_count,
                batch / self.pipeline_batches,
                self.pipeline_batches,
            )
            dm = self.attention
        contexts = dm.attention_breaks(self.model, calls, kv, max_context)
        return np.unique(np.round(contexts * per_call * max(calls, 1.0))).astype(np.int64)

    @property
    def source(self) -> str:
        """`derived` if a pool uses another device's profile, else `modeled` (a simulation is a model)."""
        return "derived" if self.compute.derived or self.attention.derived else "modeled"

    @property
    def profile(self) -> str:
        c, a = self.compute.profile_name, self.attention.profile_name
        return c if c == a else f"compute={c};attention={a}"


def iteration_model(
    config: SystemConfig,
    profile_dir: str | Path | None = None,
    derive_from: Profile | None = None,
    backend: str = "cuda",
    operators: str = "calibrated",
) -> IterationModel:
    """The iteration-time model of `config`: stored profiles per device, else `derive_from`, else the
    `operators` model ("roofline" or "calibrated", operators.device_model). A mixture-of-experts model
    gets a moe_iteration.MoEIterationModel (same interface)."""
    cm = device_model(config.compute.device, backend, profile_dir, derive_from, operators)
    if is_moe(config.model):
        am = cm if config.attention is None else device_model(
            config.attention.device, backend, profile_dir, derive_from, operators
        )  # fmt: skip
        attention_count = config.compute.count if config.attention is None else config.attention.count
        return MoEIterationModel(
            config.model, config.dtype, config.system, config.compute.count, attention_count, config.batches,
            cm, am, config.routing_skew,
        )  # fmt: skip
    if config.system == "homogeneous":
        return IterationModel(
            config.model, config.dtype, "homogeneous", config.compute.count, config.compute.count, 1, cm, cm
        )
    am = device_model(config.attention.device, backend, profile_dir, derive_from, operators)
    return IterationModel(
        config.model,
        config.dtype,
        "lamina",
        config.compute.count,
        config.attention.count,
        config.batches,
        cm,
        am,
    )
