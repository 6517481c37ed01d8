"""Replay of a trace through the engine's scheduler: which requests run in each decode iteration.

Scheduling (the reference engine's stated policy, reference_impl/engine.py): requests are admitted
first-come first-served once they have arrived; a request is admitted only when the KV cache can
reserve its prompt plus all its output tokens, so nothing is ever preempted; the queue head blocks the
requests behind it. A request whose prompt + output exceeds the whole KV capacity can never run and is
counted in `rejected_requests`. One iteration = one decode step for every running request.

Speed: the replay steps between events (an admission or the next finish), never per request per
iteration; iteration times are computed vectorised over all iterations at once.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

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
    state = _Scheduler(
        prompt[runnable],
        output[runnable],
        np.asarray(arrival_s, dtype=np.float64)[runnable],
        int(kv_capacity_tokens),
        max_batch_size,
        time_fn if follow_arrivals else None,
    )
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
