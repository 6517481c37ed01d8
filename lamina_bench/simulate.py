"""Trace-driven decode simulation of a homogeneous (tensor-parallel) system and of Lamina, on any device mix.

Scheduling (the reference engine's stated policy, reference_impl/engine.py): requests are admitted
first-come first-served once they have arrived; a request is admitted only when the KV cache can
reserve its prompt plus all its output tokens, so nothing is ever preempted; the queue head blocks the
requests behind it. A request whose prompt + output exceeds the whole KV capacity can never run and is
counted in `rejected_requests`. One iteration = one decode step for every running request.

Decode only (the paper's throughput setting): prompts occupy KV but prefill time is excluded; each
generated token costs one decode iteration whose attention reads the request's current context
(prompt + tokens generated so far).

Timing of one iteration with B running requests and S summed context tokens:
  homogeneous, TP over N devices: L * (dense(B) + 2 all-reduces + attention(B, S) on 1/N of the KV) + head.
  Lamina, n pipelined batches on R = max(1, n - 1) compute replicas of Nc/R devices each (arXiv
  2405.01814 v2, rotational staggered pipelining; n = 2 is ping-pong, n = 1 no overlap), micro-batch
  b = B/n, per layer t_m = dense(b) + all-reduces, t_a = attention(b, S/n) on Na devices,
  t_n = link round trip. A layer's cycle is the slowest of: the compute replicas (n * t_m / R), the
  attention pool (n * t_a), one micro-batch's dependency chain (t_m + t_a + t_n) and the link's
  bandwidth (n * bytes / bandwidth); an iteration is L cycles plus the model head.

Speed: the replay steps between events (an admission or the next finish), never per request per
iteration; iteration times are computed vectorised over all iterations at once.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from lamina_bench.cost import mixes_cost_usd_per_hour, tokens_per_usd, usd_per_mtok
from lamina_bench.errors import UserInputError
from lamina_bench.hardware import DeviceMix, DeviceSpec, load_catalog, parse_mix
from lamina_bench.models import (
    DTYPE_BYTES,
    ModelSpec,
    dense_flops_per_token,
    get_model,
    net_bytes_per_token_per_layer,
)
from lamina_bench.perfmodel import (
    WORKSPACE_RESERVE_FRACTION,
    DeviceModel,
    PoolMemory,
    Profile,
    attention_layer_bytes,
    device_model,
    pool_memory,
    same_layer_shape,
)
from lamina_bench.workloads import Trace, load_trace, poisson_arrivals

SYSTEMS = ("homogeneous", "lamina")
ARRIVALS = ("saturate", "trace", "poisson")
DEFAULT_LAMINA_PIPELINE_BATCHES = 2  # ping-pong, the paper's setting for one compute replica


# ---- configuration ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SystemConfig:
    """One system on one device mix. `pipeline_batches` None = 1 (homogeneous) or 2 (Lamina)."""

    system: str
    model: ModelSpec
    compute: DeviceMix
    attention: DeviceMix | None = None
    dtype: str = "fp16"
    pipeline_batches: int | None = None
    max_batch_size: int | None = None
    reserve_fraction: float = WORKSPACE_RESERVE_FRACTION

    def __post_init__(self) -> None:
        if self.system not in SYSTEMS:
            raise UserInputError(f"unknown system {self.system!r}; valid: {', '.join(SYSTEMS)}")
        if self.dtype not in DTYPE_BYTES:
            raise UserInputError(f"unknown dtype {self.dtype!r}; valid: {', '.join(DTYPE_BYTES)}")
        if self.max_batch_size is not None and self.max_batch_size < 1:
            raise UserInputError(f"max batch size must be >= 1, got {self.max_batch_size}")
        if not 0.0 <= self.reserve_fraction < 1.0:
            raise UserInputError(f"workspace reserve fraction must be in [0, 1), got {self.reserve_fraction}")
        if self.system == "homogeneous":
            if self.attention is not None:
                raise UserInputError("a homogeneous system has no attention pool; drop --attention")
            if self.pipeline_batches not in (None, 1):
                raise UserInputError("pipeline batches apply to Lamina only (homogeneous runs one batch)")
        else:
            if self.attention is None:
                raise UserInputError("a Lamina system needs an attention pool, e.g. --attention 4xH20")
            if self.batches < 1:
                raise UserInputError(f"pipeline batches must be >= 1, got {self.pipeline_batches}")
            if self.attention.count > self.model.num_kv_heads:
                raise UserInputError(
                    f"KV is partitioned across attention devices by KV head: {self.model.name} has "
                    f"{self.model.num_kv_heads} KV heads, so at most {self.model.num_kv_heads} attention devices, "
                    f"got {self.attention}"
                )
            if self.compute.count % self.replicas:
                raise UserInputError(
                    f"{self.batches} pipelined batches need {self.replicas} compute replicas; "
                    f"{self.compute} does not split into {self.replicas} equal replicas"
                )
        if self.model.num_heads % self.tp:
            raise UserInputError(
                f"tensor parallelism over {self.tp} devices needs num_heads ({self.model.num_heads}) "
                f"of {self.model.name} to be a multiple of {self.tp}"
            )

    @property
    def batches(self) -> int:
        if self.pipeline_batches is not None:
            return self.pipeline_batches
        return DEFAULT_LAMINA_PIPELINE_BATCHES if self.system == "lamina" else 1

    @property
    def replicas(self) -> int:
        """Compute replicas: n - 1 for rotational pipelining (n >= 2), else one."""
        return max(1, self.batches - 1) if self.system == "lamina" else 1

    @property
    def tp(self) -> int:
        """Tensor-parallel degree of one compute replica."""
        return self.compute.count // self.replicas

    def label(self) -> str:
        if self.system == "homogeneous":
            return f"homogeneous {self.compute}"
        return f"lamina {self.compute}+{self.attention} n={self.batches}"


@dataclass(frozen=True)
class MemoryPlan:
    compute: PoolMemory
    attention: PoolMemory | None

    @property
    def kv_capacity_tokens(self) -> int:
        return (self.attention or self.compute).kv_capacity_tokens


def memory_plan(config: SystemConfig) -> MemoryPlan:
    """Weights (sharded over one replica), workspace reserve and KV capacity of each pool."""
    spec, c = config.model, config.compute
    if config.system == "homogeneous":
        pool = pool_memory(
            spec, c.device, c.count, config.dtype, c.count, True, config.reserve_fraction, str(c)
        )
        return MemoryPlan(pool, None)
    label = f"{c}" if config.replicas == 1 else f"{c} as {config.replicas} replicas of {config.tp}"
    compute = pool_memory(
        spec, c.device, c.count, config.dtype, config.tp, False, config.reserve_fraction, label
    )
    a = config.attention
    attention = pool_memory(
        spec, a.device, a.count, config.dtype, None, True, config.reserve_fraction, str(a)
    )
    return MemoryPlan(compute, attention)


# ---- iteration time ---------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class IterationBreakdown:
    """Per-iteration arrays (shape of the inputs) for B running requests and S summed context tokens."""

    time_s: np.ndarray  # wall time of one iteration; every running request gets one token
    dense_s: np.ndarray  # MTIME of one micro-batch: dense part of all layers + head
    attention_s: np.ndarray  # ATIME of one micro-batch: attention of all layers
    network_s: np.ndarray  # link time of one micro-batch over all layers (0 for homogeneous)
    compute_busy_s: np.ndarray  # time each compute device is busy during the iteration
    attention_busy_s: np.ndarray  # time each attention device is busy (homogeneous: same devices)


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
        dense = self.compute.dense_layer(spec, self.dtype, batch, self.tp).time_s
        allreduce = self.compute.allreduce(batch * spec.hidden_size * e, self.tp).time_s
        return dense + 2.0 * allreduce

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
        head = self.compute.head(spec, self.dtype, batch, self.tp).time_s
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
        head = self.compute.head(spec, self.dtype, b, self.tp).time_s
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
) -> IterationModel:
    """The iteration-time model of `config`: stored profiles per device, else `derive_from`, else roofline."""
    cm = device_model(config.compute.device, backend, profile_dir, derive_from)
    if config.system == "homogeneous":
        return IterationModel(config.model, config.dtype, "homogeneous", config.compute.count,
                              config.compute.count, 1, cm, cm)  # fmt: skip
    am = device_model(config.attention.device, backend, profile_dir, derive_from)
    return IterationModel(config.model, config.dtype, "lamina", config.compute.count, config.attention.count,
                          config.batches, cm, am)  # fmt: skip


# ---- replay -----------------------------------------------------------------------------------------

TimeFn = Callable[[object, np.ndarray], np.ndarray]


@dataclass(frozen=True, eq=False)
class Replay:
    """What happened, iteration by iteration (arrays of length `iterations`) and per request."""

    batch: np.ndarray  # (iterations,) int64 running requests
    sum_context: np.ndarray  # (iterations,) int64 context tokens read by the iteration's attention
    kv_reserved_tokens: np.ndarray  # (iterations,) int64 KV reserved while the iteration runs
    time_s: np.ndarray  # (iterations,) float64 duration
    start_s: np.ndarray  # (iterations,) float64 start time
    admit_iteration: np.ndarray  # (requests,) int64; -1 = rejected (prompt + output > KV capacity)
    finish_iteration: np.ndarray  # (requests,) int64 index of the request's last iteration; -1 = rejected

    @property
    def iterations(self) -> int:
        return len(self.batch)

    @property
    def end_s(self) -> float:
        return float(self.start_s[-1] + self.time_s[-1]) if len(self.batch) else 0.0


def replay(
    prompt_len: np.ndarray,
    output_len: np.ndarray,
    arrival_s: np.ndarray,
    kv_capacity_tokens: int,
    time_fn: TimeFn,
    max_batch_size: int | None = None,
    follow_arrivals: bool = False,
) -> Replay:
    """Continuous batching with reserve-at-admission, FIFO, no preemption (module doc).

    `time_fn(batch, sum_context)` gives iteration durations (vectorised). `follow_arrivals` False =
    saturate (every request queued at t=0); True = a request is admitted at the first iteration that
    starts at or after its arrival, and the system idles while empty.
    """
    prompt = np.asarray(prompt_len, dtype=np.int64)
    output = np.asarray(output_len, dtype=np.int64)
    runnable = np.flatnonzero(prompt + output <= kv_capacity_tokens)  # the rest can never run
    state = _Scheduler(prompt[runnable], output[runnable], np.asarray(arrival_s, dtype=np.float64)[runnable],
                       int(kv_capacity_tokens), max_batch_size, time_fn if follow_arrivals else None)  # fmt: skip
    while state.step():
        pass
    return _assemble(state, runnable, len(prompt), time_fn)


class _Scheduler:
    """State of one replay. Time advances in segments: runs of iterations between two events (an
    admission, the next finish, or, following arrivals, the iteration during which the queue head
    arrives), during which the batch is constant and the summed context grows by the batch each step."""

    def __init__(self, prompt, output, arrival, capacity: int, max_batch: int | None, time_fn: TimeFn | None):
        self.p, self.o, self.a = prompt.tolist(), output.tolist(), arrival.tolist()
        self.cum = [0, *np.cumsum(prompt + output).tolist()]  # cum[j] - cum[i]: KV of requests i..j-1
        self.m, self.capacity = len(self.p), capacity
        self.cap_b = max_batch or max(self.m, 1)
        self.time_fn = time_fn  # None = saturate: times are computed once at the end
        self.admit, self.finish = [-1] * self.m, [-1] * self.m
        self.heap: list[int] = []  # distinct finish iterations
        self.buckets: dict[int, list[int]] = {}  # finish iteration -> [requests, KV tokens they free]
        self.seg = {"steps": [], "b": [], "s": [], "kv": [], "t0": [], "times": []}
        self.i = self.k = self.b = self.s = 0  # queue head, iteration, running requests, summed context
        self.free, self.t = capacity, 0.0

    def _head_fits(self) -> bool:
        return (
            self.i < self.m and self.b < self.cap_b and self.cum[self.i + 1] - self.cum[self.i] <= self.free
        )

    def _admit(self) -> None:
        """Admit from the queue head while the KV reserve, the batch cap and (maybe) arrivals allow."""
        i, cum = self.i, self.cum
        limit = bisect.bisect_right(self.a, self.t) if self.time_fn is not None else self.m
        j = min(bisect.bisect_right(cum, cum[i] + self.free) - 1, limit, i + self.cap_b - self.b)
        if j <= i:  # the queue head has not arrived yet
            return
        for r in range(i, j):
            f = self.k + self.o[r] - 1  # the request's last decode iteration
            self.admit[r], self.finish[r] = self.k, f
            bucket = self.buckets.get(f)
            if bucket is None:
                self.buckets[f] = [1, self.p[r] + self.o[r]]
                heapq.heappush(self.heap, f)
            else:
                bucket[0] += 1
                bucket[1] += self.p[r] + self.o[r]
        self.b += j - i
        self.s += sum(self.p[i:j])
        self.free -= cum[j] - cum[i]
        self.i = j

    def _segment_times(self, steps: int) -> np.ndarray:
        """Durations of the next `steps` iterations, cut at the one during which the queue head arrives."""
        times = np.broadcast_to(self.time_fn(self.b, self.s + self.b * np.arange(steps)), (steps,))
        if self._head_fits() and self.a[self.i] > self.t:
            cut = int(np.searchsorted(self.t + np.cumsum(times), self.a[self.i], side="left")) + 1
            times = times[:cut]
        return times

    def step(self) -> bool:
        """Admit, then run one segment; False when every request has finished."""
        if self._head_fits():
            self._admit()
        if self.b == 0:
            if self.i >= self.m:
                return False
            self.t = max(self.t, self.a[self.i])  # idle until the next arrival
            return True
        f = self.heap[0]
        steps = f - self.k + 1
        if self.time_fn is not None:
            times = self._segment_times(steps)
            steps = len(times)
            self.seg["t0"].append(self.t)
            self.seg["times"].append(times)
            self.t += float(times.sum())
        for key, value in (("steps", steps), ("b", self.b), ("s", self.s), ("kv", self.capacity - self.free)):
            self.seg[key].append(value)
        self.k += steps
        self.s += self.b * steps  # every context grows by one token per iteration
        if self.k > f:  # requests whose last iteration was f leave; their context p + o is their reserve
            heapq.heappop(self.heap)
            done, freed = self.buckets.pop(f)
            self.b, self.s, self.free = self.b - done, self.s - freed, self.free + freed
        return True


def _assemble(state: _Scheduler, runnable: np.ndarray, n: int, time_fn: TimeFn) -> Replay:
    """Per-iteration arrays from the segments; in saturate mode the times are computed here, at once."""
    seg = state.seg
    steps = np.asarray(seg["steps"], dtype=np.int64)
    starts = np.cumsum(steps) - steps
    offset = np.arange(int(steps.sum())) - np.repeat(starts, steps)
    batch = np.repeat(np.asarray(seg["b"], dtype=np.int64), steps)
    sum_context = np.repeat(np.asarray(seg["s"], dtype=np.int64), steps) + batch * offset
    kv = np.repeat(np.asarray(seg["kv"], dtype=np.int64), steps)
    if state.time_fn is not None:
        times = np.concatenate(seg["times"]) if seg["times"] else np.zeros(0)
        before = np.cumsum(times) - times  # time of all earlier iterations
        seg_before = before[starts] if len(times) else np.zeros(0)
        start = np.repeat(np.asarray(seg["t0"]), steps) + before - np.repeat(seg_before, steps)
    else:
        times = np.asarray(time_fn(batch, sum_context), dtype=np.float64) if len(batch) else np.zeros(0)
        start = np.cumsum(times) - times
    admit_all = np.full(n, -1, dtype=np.int64)
    finish_all = np.full(n, -1, dtype=np.int64)
    admit_all[runnable] = state.admit
    finish_all[runnable] = state.finish
    return Replay(batch, sum_context, kv, times, start, admit_all, finish_all)


# ---- results ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulationResult:
    """One simulated run; `to_dict` holds at least the `simulate --json` keys of DESIGN.md."""

    system: str
    model: str
    trace: str
    compute: str
    attention: str | None
    dtype: str
    pipeline_batches: int
    arrival: str
    max_batch_limit: int | None
    requests: int  # requests served
    rejected_requests: int  # prompt + output larger than the whole KV capacity
    generated_tokens: int
    iterations: int
    makespan_s: float
    throughput_tok_per_s: float  # all tokens / makespan (includes the drain at the end of the trace)
    mean_batch_size: float | None  # tokens / iterations
    # Saturate mode only: over the iterations that start while requests still wait in the queue (the
    # system is full), i.e. without the drain, whose length a single long request sets. None otherwise.
    saturated_throughput_tok_per_s: float | None
    saturated_mean_batch_size: float | None
    max_batch_size: int
    tbt_mean_ms: float | None  # token-weighted: every token's TBT is its iteration's duration
    tbt_p50_ms: float | None
    tbt_p90_ms: float | None
    tbt_p99_ms: float | None
    kv_capacity_tokens: int
    kv_peak_tokens: int
    cost_usd_per_hour: float | None
    tokens_per_usd: float | None
    usd_per_mtok: float | None
    saturated_tokens_per_usd: float | None
    net_bytes_per_token: float  # compute <-> attention link, all layers (homogeneous: no such link, 0)
    net_peak_gbps: float  # highest per-iteration link rate needed (bytes / iteration time), derived
    net_mean_gbps: float
    compute_busy_fraction: float | None
    attention_busy_fraction: float | None  # None for homogeneous (attention runs on the compute devices)
    # Mean over iterations of one whole iteration and its parts, ms (the report's per-pool time bars):
    # dense/attention/network of one micro-batch (Lamina) or of the batch (homogeneous), and the time
    # each compute / attention device is busy per iteration (all micro-batches).
    iteration_mean_ms: float | None
    dense_mean_ms: float | None
    attention_mean_ms: float | None
    network_mean_ms: float | None
    compute_busy_mean_ms: float | None
    attention_busy_mean_ms: float | None
    compute_flops_utilization: float | None  # dense model flops / (time * peak), derived
    kv_bandwidth_utilization: float | None  # KV bytes read / (time * peak bandwidth) of the KV pool, derived
    source: str
    profile: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def _weighted_percentiles(
    values: np.ndarray, weights: np.ndarray, percents: tuple[float, ...]
) -> list[float]:
    """Percentiles of `values` where each value counts `weights` times (lower value at ties)."""
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    idx = np.searchsorted(cum, np.asarray(percents) / 100.0 * cum[-1], side="left")
    return [float(v) for v in values[order][np.minimum(idx, len(values) - 1)]]


def _ratio(num: float, den: float | None) -> float | None:
    return None if den is None or den <= 0 else num / den


def _saturated(rep: Replay, time_s: np.ndarray) -> tuple[float | None, float | None]:
    """(throughput, mean batch) over iterations before the last admission (queue non-empty at their start)."""
    window = int(rep.admit_iteration.max()) if len(rep.admit_iteration) else 0
    if window <= 0:
        return None, None
    tokens = float(rep.batch[:window].sum())
    return tokens / float(time_s[:window].sum()), tokens / window


def summarize(config: SystemConfig, model: IterationModel, trace_name: str, arrival: str, rep: Replay,
              kv_capacity_tokens: int) -> SimulationResult:  # fmt: skip
    """Metrics of a replay (see SimulationResult)."""
    spec = config.model
    bd = model.breakdown(rep.batch, rep.sum_context)
    tokens = int(rep.batch.sum())
    makespan = rep.end_s
    served = int(np.count_nonzero(rep.admit_iteration >= 0))
    tbt = [None] * 4
    if tokens:
        mean_ms = float(np.sum(bd.time_s * rep.batch) / tokens * 1e3)
        tbt = [mean_ms] + [v * 1e3 for v in _weighted_percentiles(bd.time_s, rep.batch, (50, 90, 99))]
    lamina = config.system == "lamina"
    net_per_token = (
        float(net_bytes_per_token_per_layer(spec, config.dtype) * spec.num_layers) if lamina else 0.0
    )
    rate_gbps = rep.batch * net_per_token * 8 / np.maximum(bd.time_s, 1e-30) / 1e9
    cost = mixes_cost_usd_per_hour(config.compute, config.attention)
    throughput = tokens / makespan if makespan > 0 else 0.0
    kv_pool = config.attention or config.compute
    peak_flops = config.compute.device.bf16_flops_per_s
    peak_bw = kv_pool.device.mem_bandwidth_bytes_per_s
    kv_bytes = float(attention_layer_bytes(spec, config.dtype, 0.0, rep.sum_context.sum())) * spec.num_layers
    sat_tput, sat_batch = _saturated(rep, bd.time_s) if arrival == "saturate" else (None, None)
    mean_ms = {k: float(getattr(bd, k).mean()) * 1e3 if rep.iterations else None
               for k in ("time_s", "dense_s", "attention_s", "network_s", "compute_busy_s", "attention_busy_s")}  # fmt: skip
    return SimulationResult(
        system=config.system, model=spec.name, trace=trace_name, compute=str(config.compute),
        attention=str(config.attention) if lamina else None, dtype=config.dtype,
        pipeline_batches=config.batches, arrival=arrival, max_batch_limit=config.max_batch_size,
        requests=served, rejected_requests=len(rep.admit_iteration) - served, generated_tokens=tokens,
        iterations=rep.iterations, makespan_s=makespan, throughput_tok_per_s=throughput,
        mean_batch_size=tokens / rep.iterations if rep.iterations else None,
        saturated_throughput_tok_per_s=sat_tput, saturated_mean_batch_size=sat_batch,
        max_batch_size=int(rep.batch.max()) if rep.iterations else 0,
        tbt_mean_ms=tbt[0], tbt_p50_ms=tbt[1], tbt_p90_ms=tbt[2], tbt_p99_ms=tbt[3],
        kv_capacity_tokens=kv_capacity_tokens,
        kv_peak_tokens=int(rep.kv_reserved_tokens.max()) if rep.iterations else 0,
        cost_usd_per_hour=cost, tokens_per_usd=tokens_per_usd(throughput, cost),
        usd_per_mtok=usd_per_mtok(throughput, cost),
        saturated_tokens_per_usd=None if sat_tput is None else tokens_per_usd(sat_tput, cost),
        net_bytes_per_token=net_per_token,
        net_peak_gbps=float(rate_gbps.max()) if lamina and rep.iterations else 0.0,
        net_mean_gbps=tokens * net_per_token * 8 / makespan / 1e9 if makespan > 0 else 0.0,
        compute_busy_fraction=_ratio(float(bd.compute_busy_s.sum()), makespan),
        attention_busy_fraction=_ratio(float(bd.attention_busy_s.sum()), makespan) if lamina else None,
        iteration_mean_ms=mean_ms["time_s"], dense_mean_ms=mean_ms["dense_s"],
        attention_mean_ms=mean_ms["attention_s"], network_mean_ms=mean_ms["network_s"],
        compute_busy_mean_ms=mean_ms["compute_busy_s"], attention_busy_mean_ms=mean_ms["attention_busy_s"],
        compute_flops_utilization=None if peak_flops is None else _ratio(
            dense_flops_per_token(spec) * tokens, makespan * config.compute.count * peak_flops),
        kv_bandwidth_utilization=None if peak_bw is None else _ratio(kv_bytes, makespan * kv_pool.count * peak_bw),
        source=model.source, profile=model.profile,
    )  # fmt: skip


def simulate(
    config: SystemConfig,
    trace: Trace,
    arrival: str = "saturate",
    rate_per_s: float | None = None,
    seed: int = 0,
    requests: int | None = None,
    model: IterationModel | None = None,
) -> SimulationResult:
    """Replay `trace` (its first `requests`) on `config`; deterministic for a given seed.

    arrival: "saturate" (all queued at t=0), "trace" (the trace's timestamps) or "poisson" (at
    `rate_per_s`, seeded). `model` defaults to `iteration_model(config)` (stored profiles or roofline).
    """
    if arrival not in ARRIVALS:
        raise UserInputError(f"unknown arrival mode {arrival!r}; valid: {', '.join(ARRIVALS)}")
    if requests is not None:
        if requests < 1:
            raise UserInputError(f"--requests must be >= 1, got {requests}")
        trace = trace.head(requests)
    if arrival == "poisson":
        if rate_per_s is None:
            raise UserInputError("arrival mode 'poisson' needs a rate (requests/s), e.g. --rate 5")
        arrival_s = poisson_arrivals(len(trace), rate_per_s, seed)
    else:
        arrival_s = trace.arrival_s
    plan = memory_plan(config)
    model = model or iteration_model(config)
    rep = replay(trace.prompt_len, trace.output_len, arrival_s, plan.kv_capacity_tokens, model.time_s,
                 config.max_batch_size, follow_arrivals=arrival != "saturate")  # fmt: skip
    return summarize(config, model, trace.name, arrival, rep, plan.kv_capacity_tokens)


# ---- the paper's nine comparisons --------------------------------------------------------------------

# arXiv 2405.01814 v2 equal-cost setups: (model, Lamina compute, Lamina attention, homogeneous TP).
PAPER_SETUPS = (
    ("llama-33b", "1xH100", "2xH20", "2xH100"),
    ("llama-65b", "2xH100", "4xH20", "4xH100"),
    ("llama3-70b", "2xH100", "4xH20", "4xH100"),
)
PAPER_TRACES = ("azure-conv", "azure-code", "kimi-conv")


@dataclass(frozen=True)
class Comparison:
    model: str
    trace: str
    homogeneous: SimulationResult
    lamina: SimulationResult

    @property
    def throughput_ratio(self) -> float | None:
        """Lamina / homogeneous saturated throughput (without the drain at the end of the trace)."""
        h, la = self.homogeneous.saturated_throughput_tok_per_s, self.lamina.saturated_throughput_tok_per_s
        return None if la is None else _ratio(la, h)

    @property
    def whole_trace_throughput_ratio(self) -> float | None:
        return _ratio(self.lamina.throughput_tok_per_s, self.homogeneous.throughput_tok_per_s)

    @property
    def tokens_per_usd_ratio(self) -> float | None:
        h, la = self.homogeneous.saturated_tokens_per_usd, self.lamina.saturated_tokens_per_usd
        return None if la is None else _ratio(la, h)


def paper_comparisons(
    requests: int | None = None,
    catalog: Mapping[str, DeviceSpec] | None = None,
    profile_dir: str | Path | None = None,
) -> list[Comparison]:
    """The paper's nine comparisons (3 models x 3 traces, saturate mode, fp16, ping-pong Lamina), from
    the stored profiles in `profile_dir` where a device has one, else the roofline."""
    catalog = load_catalog() if catalog is None else catalog
    rows = []
    for name, compute, attention, homog in PAPER_SETUPS:
        spec = get_model(name)
        lamina = SystemConfig("lamina", spec, parse_mix(compute, catalog), parse_mix(attention, catalog))
        base = SystemConfig("homogeneous", spec, parse_mix(homog, catalog))
        models = [iteration_model(c, profile_dir=profile_dir) for c in (base, lamina)]
        for trace_name in PAPER_TRACES:
            trace = load_trace(trace_name)
            rows.append(Comparison(name, trace_name, simulate(base, trace, requests=requests, model=models[0]),
                                   simulate(lamina, trace, requests=requests, model=models[1])))  # fmt: skip
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def comparisons_markdown(rows: list[Comparison]) -> str:
    """A markdown table of `paper_comparisons` (one line per model x trace) and what its columns mean."""
    head = (
        "| model | trace | homogeneous | Lamina | tok/s H | tok/s L | L/H | mean batch H | mean batch L "
        "| TBT p50/p99 ms H | TBT p50/p99 ms L | tok/$ H | tok/$ L | L/H tok/$ | L/H whole trace | rejected H/L |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in rows:
        h, la = c.homogeneous, c.lamina
        lines.append(
            f"| {c.model} | {c.trace} | {h.compute} | {la.compute}+{la.attention} "
            f"| {_fmt(h.saturated_throughput_tok_per_s, ',.0f')} | {_fmt(la.saturated_throughput_tok_per_s, ',.0f')} "
            f"| {_fmt(c.throughput_ratio, '.2f')} "
            f"| {_fmt(h.saturated_mean_batch_size, '.0f')} | {_fmt(la.saturated_mean_batch_size, '.0f')} "
            f"| {_fmt(h.tbt_p50_ms, '.1f')}/{_fmt(h.tbt_p99_ms, '.1f')} "
            f"| {_fmt(la.tbt_p50_ms, '.1f')}/{_fmt(la.tbt_p99_ms, '.1f')} "
            f"| {_fmt(h.saturated_tokens_per_usd, ',.0f')} | {_fmt(la.saturated_tokens_per_usd, ',.0f')} "
            f"| {_fmt(c.tokens_per_usd_ratio, '.2f')} | {_fmt(c.whole_trace_throughput_ratio, '.2f')} "
            f"| {h.rejected_requests}/{la.rejected_requests} |"
        )
    first = rows[0].lamina if rows else None
    if first is not None:
        lines += [
            "",
            f"Saturate mode (all requests queued at t=0, decode only, {first.dtype}), Lamina ping-pong "
            f"(n={first.pipeline_batches}). tok/s, mean batch and tok/$ cover the saturated phase (requests "
            "still queued); 'L/H whole trace' includes the drain after the last admission. TBT over all tokens. "
            "Rejected: requests whose prompt + output exceed the whole KV capacity. "
            f"Source: {first.source}, profile: {first.profile}.",
        ]
    return "\n".join(lines)


def result_table(result: SimulationResult) -> str:
    """`key  value` lines of one result, for the CLI."""
    width = max(len(k) for k in result.to_dict())
    out = []
    for key, value in result.to_dict().items():
        text = "n/a" if value is None else (f"{value:,.4g}" if isinstance(value, float) else str(value))
        out.append(f"{key:<{width}}  {text}")
    return "\n".join(out)


# ---- hook: predicting the reference implementation (model-error measurement) -------------------------


def spec_from_hf_config(config: Mapping, name: str = "hf-model") -> ModelSpec:
    """A ModelSpec from a Hugging Face config.json dict (llama / mistral / qwen2 / opt layouts)."""
    kind = str(config.get("model_type", "llama"))
    family = {"opt": "opt", "qwen2": "qwen2"}.get(kind, "llama")
    try:
        d, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        return ModelSpec(
            name=name.lower(), family=family, num_layers=int(config["num_hidden_layers"]), hidden_size=d,
            num_heads=heads, num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or d // heads),
            intermediate_size=int(config["ffn_dim"] if family == "opt" else config["intermediate_size"]),
            vocab_size=int(config["vocab_size"]), max_position=int(config.get("max_position_embeddings", 2048)),
            mlp="relu" if family == "opt" else "swiglu",
            tie_embeddings=bool(config.get("tie_word_embeddings", family == "opt")),
            qkv_bias=family in ("opt", "qwen2") or bool(config.get("attention_bias", False)),
            source=f"HF config.json ({kind})",
        )  # fmt: skip
    except KeyError as exc:
        raise UserInputError(f"HF config is missing {exc.args[0]!r}") from None


@dataclass(frozen=True)
class ReferenceRun:
    """A configuration of the reference engine (reference_impl) to predict: a fixed batch decoding."""

    model: ModelSpec
    system: str  # "homogeneous" | "lamina"
    batch_size: int
    context_len: int  # prompt tokens of every request
    decode_steps: int  # decode iterations measured
    dtype: str = "fp32"
    compute_workers: int = 1  # homogeneous: TP degree
    attention_workers: int = 1  # Lamina only
    pipeline_batches: int = 1  # Lamina only

    def __post_init__(self) -> None:
        if self.system not in SYSTEMS:
            raise UserInputError(f"unknown system {self.system!r}; valid: {', '.join(SYSTEMS)}")
        for name in ("batch_size", "context_len", "decode_steps", "compute_workers", "attention_workers",
                     "pipeline_batches"):  # fmt: skip
            if getattr(self, name) < 1:
                raise UserInputError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class ReferencePrediction:
    throughput_tok_per_s: float
    mean_tbt_s: float
    source: str
    profile: str


def predict_reference_run(
    profile: Profile, run: ReferenceRun, device: DeviceSpec | None = None
) -> ReferencePrediction:
    """Predict the reference engine's decode throughput and mean TBT from a profile of the same machine.

    Every worker is a process on the profiled device (e.g. "cpu" over gloo), so both pools use the
    profile; the link and all-reduce come from its `link` / `allreduce` points. The batch is fixed
    (every request has `context_len` prompt tokens and decodes `decode_steps` tokens).
    """
    dm = DeviceModel(device, profile)
    lamina = run.system == "lamina"
    model = IterationModel(run.model, run.dtype, run.system, run.compute_workers,
                           run.attention_workers if lamina else run.compute_workers,
                           run.pipeline_batches if lamina else 1, dm, dm)  # fmt: skip
    steps = np.arange(run.decode_steps)
    times = model.time_s(run.batch_size, run.batch_size * (run.context_len + steps))
    return ReferencePrediction(
        throughput_tok_per_s=float(run.batch_size * run.decode_steps / times.sum()),
        mean_tbt_s=float(times.mean()),
        source=model.source,
        profile=model.profile,
    )
