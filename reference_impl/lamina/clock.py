"""Where a worker's time goes: every second of wall time charged to one category, per step.

Each worker (rank 0 included) has one `WorkerClock`; the code it runs opens sections ("dense",
"attention", "network", "idle"), time outside them is "other", and each step ends with `mark_step`,
which records a `StepTimes`. The run reports them per worker (results.WorkerTimes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

CATEGORIES = ("dense", "attention", "network", "idle", "other")
STEP_KINDS = ("prefill", "decode", "rebuild", "regroup", "stop")


@dataclass(frozen=True)
class StepTimes:
    """Seconds one worker spent per category between the end of its previous step and the end of this one.

    dense: model slices (tensor-parallel all-reduces included); attention: attention and KV writes;
    network: in send calls and waiting for sends to finish; idle: blocked waiting for a message (which
    includes that message's transfer time, small on one machine next to the peer's compute); other:
    the rest (planning, bookkeeping; on rank 0 also the scheduler and sampling).

    On CUDA, kernels and NCCL work run asynchronously, so a host timer alone measures launches: the
    WorkerClock of a CUDA worker waits for the device's current stream at the end of every section,
    so the section is charged for the work it launched (the tensor-parallel all-reduces and the sends
    that flush waited for included). On CPU everything is synchronous and nothing is added.
    """

    step_id: int
    kind: str  # "prefill" | "decode" | "rebuild" | "regroup" | "stop"
    dense_s: float
    attention_s: float
    network_s: float
    idle_s: float
    other_s: float

    @property
    def wall_s(self) -> float:
        return self.dense_s + self.attention_s + self.network_s + self.idle_s + self.other_s


class WorkerClock:
    """Attributes wall time to the innermost open section (nested sections do not double count).

    device: the worker's device; on CUDA every section ends by waiting for its current stream.
    """

    def __init__(
        self, now: Callable[[], float] = time.perf_counter, device: torch.device | str | None = None
    ) -> None:
        self._now = now  # seconds; injectable for tests
        # The current stream, not torch.cuda.synchronize(device): a device-wide wait would also wait
        # for NCCL's own streams, turning every asynchronous send into one that waits for its receiver,
        # and two workers sending to each other (ping-pong) would then wait for each other forever.
        # The compute stream holds the dense and attention kernels and, through Work.wait, the
        # all-reduces and the sends a flush waits for.
        device = None if device is None else torch.device(device)
        self._cuda_device = device if device is not None and device.type == "cuda" else None
        self._totals = dict.fromkeys(CATEGORIES, 0.0)
        self._stack = ["other"]
        self._last = now()
        self._at_last_mark = dict(self._totals)
        self.steps: list[StepTimes] = []

    def _charge(self) -> None:
        now = self._now()
        self._totals[self._stack[-1]] += now - self._last
        self._last = now

    @contextmanager
    def section(self, category: str) -> Iterator[None]:
        if category not in CATEGORIES:
            raise ValueError(f"unknown time category {category!r}; valid: {', '.join(CATEGORIES)}")
        self._charge()
        self._stack.append(category)
        try:
            yield
            if self._cuda_device is not None:  # charge the GPU work this section launched to it
                torch.cuda.current_stream(self._cuda_device).synchronize()
        finally:
            self._charge()
            self._stack.pop()

    def totals(self) -> dict[str, float]:
        self._charge()
        return dict(self._totals)

    def mark_step(self, step_id: int, kind: str) -> StepTimes:
        """Closes a step: the time since the previous mark, by category."""
        now = self.totals()
        delta = {c: now[c] - self._at_last_mark[c] for c in CATEGORIES}
        self._at_last_mark = now
        step = StepTimes(step_id, kind, *(delta[c] for c in CATEGORIES))
        self.steps.append(step)
        return step
