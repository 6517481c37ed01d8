"""A prefill pool of its own (Splitwise / DistServe style; the Lamina paper's section 5).

Prompts are prefilled on `N` devices of their own (tensor parallel over the N), one prompt at a time in
arrival order (FIFO; batching prompts is not modelled: a prompt of a few hundred tokens already keeps the
GEMMs compute-bound, so batching mostly saves the fixed per-pass costs, assumed small). A prompt of p
tokens takes

    c = L [layer(p) + prefill_attention(p, p (p + 1) / 2)] + head(1) + CPU overhead of one request

(`ServingIterationModel`'s layer and head with the pool's devices, model/prefill.py). Its KV
(p x kv_bytes_per_token) leaves layer by layer while later layers compute, over the link from the pool to
the KV side (Lamina: the attention pool; homogeneous: the decode devices), of bandwidth
min(N x NIC, N_kv x NIC) and latency the larger of the two NICs'. Per request:

    x = p kv_bytes_per_token / bandwidth                       transfer time
    s = max(c, x)                                              the pool's time per prompt (its link is part
                                                               of its pipeline: a link-bound pool slows down)
    start_i = max(arrival_i, start_{i-1} + s_{i-1})            FIFO single server (Lindley's recursion)
    token_i = start_i + c                                      the first token, sampled on the pool
    ready_i = start_i + s + x / L + latency                    the last layer's KV has arrived

TTFT = token - arrival; the queueing delay = start - arrival. The decode side admits request i from
max(ready_1..ready_i) (FIFO hand-over; model/paged_replay.py, `prefilled`). The pool's weights must fit
under vLLM's budget (memory.vllm_pool_memory, holding no KV beyond the prompt in flight).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lamina_bench.catalog.devices import DeviceMix
from lamina_bench.catalog.models import kv_bytes_per_token
from lamina_bench.errors import UserInputError
from lamina_bench.model.iteration import IterationModel, iteration_model
from lamina_bench.model.memory import vllm_pool_memory
from lamina_bench.model.prefill import ServingIterationModel, prefill_attention_layer_s
from lamina_bench.model.system import SystemConfig


@dataclass(frozen=True, eq=False)
class PrefillSchedule:
    """When each request was prefilled on the pool (arrays of length n, seconds)."""

    start_s: np.ndarray  # prefill starts (the end of its queueing)
    token_s: np.ndarray  # first token sampled
    ready_s: np.ndarray  # KV complete on the KV side
    compute_s: np.ndarray  # c
    transfer_s: np.ndarray  # x
    kv_bytes: np.ndarray  # KV sent, p x kv_bytes_per_token

    @property
    def busy_s(self) -> float:
        """Seconds the pool was busy (sum of max(c, x))."""
        return float(np.maximum(self.compute_s, self.transfer_s).sum())


def fifo_starts(arrival_s: np.ndarray, service_s: np.ndarray) -> np.ndarray:
    """Start times of a FIFO single server: start_i = max(a_i, start_{i-1} + s_{i-1}), vectorised as
    start_i = S_i + max_{j <= i} (a_j - S_j), S the service time summed before each request."""
    before = np.cumsum(service_s) - service_s
    return before + np.maximum.accumulate(np.asarray(arrival_s, dtype=float) - before)


@dataclass(frozen=True)
class PrefillPool:
    """The prefill pool of a system whose scheduler names one (module doc)."""

    mix: DeviceMix
    serving: ServingIterationModel  # TP over the pool's devices
    kv_bytes_per_token: float
    link_bandwidth_bytes_per_s: float
    link_latency_s: float

    def prefill_time_s(self, prompt) -> np.ndarray:
        """c of prompts of `prompt` tokens (module doc), vectorised."""
        s, b = self.serving, self.serving.base
        p = np.asarray(prompt, dtype=float)
        attn = prefill_attention_layer_s(b.compute, b.model, b.dtype, p, p * (p + 1) / 2, b.tp)
        return b.model.num_layers * (s._layer(p) + attn) + s._head(np.ones_like(p)) + s.policy.cpu_overhead(1)

    def schedule(self, prompt, arrival_s) -> PrefillSchedule:
        """FIFO prefill of requests arriving at `arrival_s` (non-decreasing) with `prompt` tokens."""
        p = np.asarray(prompt, dtype=float)
        c = self.prefill_time_s(p)
        kv = p * self.kv_bytes_per_token
        x = kv / self.link_bandwidth_bytes_per_s
        s = np.maximum(c, x)
        start = fifo_starts(arrival_s, s)
        ready = start + s + x / self.serving.base.model.num_layers + self.link_latency_s
        return PrefillSchedule(start, start + c, ready, c, x, kv)


def prefill_pool(
    config: SystemConfig, kv_model: IterationModel, model: IterationModel | None = None, profile_dir=None
) -> PrefillPool | None:
    """The prefill pool of `config` (None if its scheduler has none); UserInputError when the pool's
    devices cannot hold the weights or split the heads. `kv_model` is the system's iteration model (its KV
    side's link); `model` the pool's, by default from the profiles in `profile_dir` (or the stored ones)."""
    mix = config.scheduler.prefill_pool
    if mix is None:
        return None
    sched, spec = config.scheduler, config.model
    label = f"prefill pool {mix}"
    try:
        pool = SystemConfig("homogeneous", spec, mix, dtype=config.dtype, scheduler=sched)
    except UserInputError as exc:
        raise UserInputError(f"{label}: {exc}") from None
    vllm_pool_memory(spec, mix.device, mix.count, config.dtype, mix.count, False,
                     sched.gpu_memory_utilization, sched.max_num_batched_tokens, sched.block_size, label)  # fmt: skip
    base = model or iteration_model(pool, profile_dir=profile_dir)
    lat_p, bw_p, _ = base.compute.nic()
    lat_k, bw_k, _ = kv_model.attention.nic()  # the KV side: the attention pool, or the decode devices
    return PrefillPool(
        mix, ServingIterationModel(base, sched), float(kv_bytes_per_token(spec, config.dtype)),
        min(mix.count * bw_p, kv_model.attention_count * bw_k), max(lat_p, lat_k),
    )  # fmt: skip


def _count_at_or_before(ts: np.ndarray, t: np.ndarray) -> np.ndarray:
    """For each t, how many of the sorted `ts` are <= t (searchsorted right). When `t` is sorted too (the
    windows of a replay) the few `ts` are placed among the many `t` instead, and the counts accumulated."""
    if len(t) > 4 * len(ts) and np.all(t[1:] >= t[:-1]):
        first = np.searchsorted(t, ts, side="left")  # the first t each ts is <= to
        return np.cumsum(np.bincount(first, minlength=len(t) + 1))[: len(t)]
    return np.searchsorted(ts, t, side="right")


def link_bytes_in_windows(
    bytes_: np.ndarray, start_s: np.ndarray, end_s: np.ndarray, win_start: np.ndarray, win_end: np.ndarray
) -> np.ndarray:
    """Bytes of transfers (each `bytes_` sent at a constant rate over [start, end)) that fall in each window
    [win_start, win_end): sum_i rate_i (|[s_i, e_i) ∩ window|), via the cumulative F(t) = sum_i rate_i
    (max(0, t - s_i) - max(0, t - e_i)), each term from sorted times and prefix sums."""
    dur = np.maximum(end_s - start_s, 1e-30)
    rate = bytes_ / dur

    def ramp(times: np.ndarray, t: np.ndarray) -> np.ndarray:  # sum_i rate_i max(0, t - times_i)
        order = np.argsort(times, kind="stable")
        ts, rs = times[order], rate[order]
        cr, crt = np.concatenate([[0.0], np.cumsum(rs)]), np.concatenate([[0.0], np.cumsum(rs * ts)])
        j = _count_at_or_before(ts, t)
        return t * cr[j] - crt[j]

    def cumulative(t: np.ndarray) -> np.ndarray:
        return ramp(start_s, t) - ramp(end_s, t)

    return np.maximum(cumulative(win_end) - cumulative(win_start), 0.0)


def streamed_kv(
    schedule: PrefillSchedule, sent: np.ndarray, end_s: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, Gb/s) of the pool's KV (requests `sent`) on the link during each iteration of a replay
    ending at `end_s`: windows that tile the run (each iteration and the idle time before it), the rate
    over the window."""
    start = np.concatenate([[0.0], end_s[:-1]])
    streamed = link_bytes_in_windows(
        schedule.kv_bytes[sent], schedule.start_s[sent], schedule.ready_s[sent], start, end_s
    )
    return streamed, streamed * 8 / np.maximum(end_s - start, 1e-30) / 1e9
