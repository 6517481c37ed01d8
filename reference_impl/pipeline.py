"""Pipelining several batches so the compute pool and the attention pool overlap (arXiv 2405.01814 v2,
staggered pipelining).

One decode iteration of a batch through an L-layer model is 2L+1 tasks: dense slices 0..L on a compute
replica (slice k ends with layer k's QKV projection; slice L ends with the LM head) and attention
calls 0..L-1 on the attention pool. Dependencies: attention k of batch j after slice k of batch j;
slice k+1 after attention k.

Modes (n = number of batches in flight):
- single (n = 1, one replica): no overlap; each pool idles while the other works.
- ping-pong (n = 2, one replica): batch 1's dense slice runs during batch 0's attention and back;
  with t_a = t_m one of the two is hidden.
- rotational (n >= 3, n - 1 replicas): slice k of batch j runs on replica ((j + k) mod (n - 1)) + 1.
  With t_a = t_m / (n - 1) (the attention pool sized for it) every replica and the attention pool
  stay busy: replica i runs t_m / (n - 1) behind replica i - 1. Ping-pong is the n = 2 case.

`schedule` gives the order of work on each resource (a pure function); `simulate_schedule` times it
(an event simulation with one task at a time per resource); the runtime executes the order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from reference_impl.errors import ConfigError

DENSE = "dense"
ATTENTION = "attention"
ATTENTION_POOL = 0  # resource index of the attention pool; compute replicas are 1..R
MODES = ("single", "ping-pong", "rotational")


@dataclass(frozen=True)
class Step:
    """One task. `index` is the slice (dense: 0..L) or layer (attention: 0..L-1); `replica` the compute
    replica (1..R) for dense steps, ATTENTION_POOL for attention. Times are filled by simulate_schedule."""

    kind: str
    batch: int
    index: int
    replica: int
    start_s: float | None = None
    end_s: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in (DENSE, ATTENTION):
            raise ValueError(f"Step.kind {self.kind!r} is invalid; valid: {DENSE!r}, {ATTENTION!r}")
        if self.batch < 0 or self.index < 0:
            raise ValueError(f"Step batch and index must be >= 0, got batch={self.batch}, index={self.index}")
        if (self.kind == ATTENTION) != (self.replica == ATTENTION_POOL) or self.replica < 0:
            raise ValueError(
                f"{self.kind} step on resource {self.replica}: attention runs on 0, dense on 1..R"
            )
        if (self.start_s is None) != (self.end_s is None):
            raise ValueError("Step start_s and end_s are both set or both None")
        if self.start_s is not None and not 0 <= self.start_s <= self.end_s:
            raise ValueError(f"Step needs 0 <= start_s <= end_s, got {self.start_s}, {self.end_s}")

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.kind, self.batch, self.index)


def pipeline_mode(num_batches: int, num_compute_replicas: int) -> str:
    """ "single", "ping-pong" or "rotational"; ConfigError naming the rule if the pair is not one of them."""
    if num_batches < 1 or num_compute_replicas < 1:
        raise ConfigError(
            f"need num_batches >= 1 and num_compute_replicas >= 1, got {num_batches} and {num_compute_replicas}"
        )
    if num_batches == 1 and num_compute_replicas == 1:
        return "single"
    if num_compute_replicas != num_batches - 1:
        raise ConfigError(
            f"{num_batches} batches on {num_compute_replicas} compute replicas is not a pipeline: "
            "valid are 1 batch on 1 replica, ping-pong (2 batches on 1 replica), or rotational "
            "(n batches on n-1 replicas)"
        )
    return "ping-pong" if num_batches == 2 else "rotational"


def compute_replica(batch: int, slice_index: int, num_batches: int) -> int:
    """Replica (1-based) running slice `slice_index` of `batch`: ((j + k) mod (n - 1)) + 1; 1 when n <= 2."""
    if num_batches <= 2:
        return 1
    return (batch + slice_index) % (num_batches - 1) + 1


def _order_key(step: Step, num_batches: int) -> int:
    # Ideal start time of the step in units of t_m / (n - 1) when t_a = t_m / (n - 1): slice k of batch
    # j starts at (k n + j); attention k right after slice k, so it takes the same key.
    return step.index * num_batches + step.batch


def schedule(num_layers: int, num_batches: int, num_compute_replicas: int) -> list[list[Step]]:
    """Order of work per resource for one decode iteration of every batch.

    Returns R + 1 lists: [0] the attention pool, [r] compute replica r. Each list is in the order the
    resource runs it (by ideal start time, see _order_key); replica r's steps are exactly those whose
    ideal start is r - 1 modulo n - 1, so they never overlap in the ideal timing.
    """
    if num_layers < 1:
        raise ConfigError(f"num_layers must be >= 1, got {num_layers}")
    pipeline_mode(num_batches, num_compute_replicas)
    steps = [
        Step(DENSE, j, k, compute_replica(j, k, num_batches))
        for j in range(num_batches)
        for k in range(num_layers + 1)
    ]
    steps += [Step(ATTENTION, j, k, ATTENTION_POOL) for j in range(num_batches) for k in range(num_layers)]
    out: list[list[Step]] = [[] for _ in range(num_compute_replicas + 1)]
    for step in sorted(steps, key=lambda s: _order_key(s, num_batches)):
        out[step.replica].append(step)
    return out


# ---- timing simulation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceUsage:
    resource: int  # ATTENTION_POOL or compute replica 1..R
    busy_s: float
    idle_s: float  # within [0, iteration_time_s]
    utilization: float  # busy_s / iteration_time_s


@dataclass(frozen=True)
class Timeline:
    """Simulated execution: timed steps per resource (same order as the schedule) and usage."""

    steps: tuple[tuple[Step, ...], ...]
    iteration_time_s: float  # from 0 to the last step's end
    usage: tuple[ResourceUsage, ...]

    def utilization_between(self, resource: int, start_s: float, end_s: float) -> float:
        """Busy share of `resource` within [start_s, end_s] (e.g. the steady state)."""
        if not end_s > start_s:
            raise ValueError(f"need end_s > start_s, got [{start_s}, {end_s}]")
        busy = sum(max(0.0, min(s.end_s, end_s) - max(s.start_s, start_s)) for s in self.steps[resource])
        return busy / (end_s - start_s)


def _durations(value: float | Sequence[float], count: int, name: str) -> list[float]:
    values = [float(value)] * count if isinstance(value, int | float) else [float(v) for v in value]
    if len(values) != count:
        raise ConfigError(f"{name} needs one value or {count} (one per index), got {len(values)}")
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise ConfigError(f"{name} must be finite and >= 0, got {values}")
    return values


def _dependency(step: Step) -> tuple[str, int, int] | None:
    if step.kind == ATTENTION:
        return (DENSE, step.batch, step.index)
    return None if step.index == 0 else (ATTENTION, step.batch, step.index - 1)


def _check_steps(steps: Sequence[Sequence[Step]]) -> None:
    seen: set[tuple[str, int, int]] = set()
    for resource, work in enumerate(steps):
        for step in work:
            if step.replica != resource:
                raise ConfigError(
                    f"step {step.key} is listed on resource {resource} but names {step.replica}"
                )
            if step.key in seen:
                raise ConfigError(f"step {step.key} appears more than once")
            seen.add(step.key)
    missing = {_dependency(s) for work in steps for s in work} - seen - {None}
    if missing:
        raise ConfigError(f"steps depend on steps that are not scheduled: {sorted(missing)}")


def simulate_schedule(
    steps: Sequence[Sequence[Step]],
    dense_time_s: float | Sequence[float],
    attention_time_s: float | Sequence[float],
    link_time_s: float = 0.0,
) -> Timeline:
    """Times a schedule: each resource runs its steps in order, one at a time, each as soon as the
    resource is free and its dependency ended `link_time_s` earlier (the q/k/v or output transfer; the
    link is modeled as a delay without contention). Durations are one value, or one per slice
    (dense, L + 1 values) / per layer (attention, L values).
    """
    _check_steps(steps)
    num_slices = 1 + max((s.index for work in steps for s in work if s.kind == DENSE), default=-1)
    dense = _durations(dense_time_s, num_slices, "dense_time_s")
    attention = _durations(attention_time_s, max(num_slices - 1, 0), "attention_time_s")
    link = _durations(link_time_s, 1, "link_time_s")[0]
    ends: dict[tuple[str, int, int], float] = {}
    timed: list[list[Step]] = [[] for _ in steps]
    free_at = [0.0] * len(steps)
    progressed = True
    while progressed:
        progressed = False
        for r, work in enumerate(steps):
            while len(timed[r]) < len(work):
                step = work[len(timed[r])]
                dep = _dependency(step)
                if dep is not None and dep not in ends:
                    break
                start = max(free_at[r], 0.0 if dep is None else ends[dep] + link)
                end = start + (dense[step.index] if step.kind == DENSE else attention[step.index])
                ends[step.key] = free_at[r] = end
                timed[r].append(replace(step, start_s=start, end_s=end))
                progressed = True
    if any(len(t) < len(w) for t, w in zip(timed, steps, strict=True)):
        stuck = [w[len(t)].key for t, w in zip(timed, steps, strict=True) if len(t) < len(w)]
        raise ConfigError(f"the per-resource order deadlocks: next steps {stuck} wait on each other")
    return _timeline(timed)


def _timeline(timed: list[list[Step]]) -> Timeline:
    total = max((s.end_s for work in timed for s in work), default=0.0)
    usage = []
    for r, work in enumerate(timed):
        busy = sum(s.end_s - s.start_s for s in work)
        usage.append(ResourceUsage(r, busy, total - busy, busy / total if total > 0 else math.nan))
    return Timeline(tuple(tuple(w) for w in timed), total, tuple(usage))
