"""Capacity at an SLO: the highest request rate one configuration serves while p99 TTFT and p99 TPOT meet it.

For a configuration (scheduler `vllm`, prefill colocated or on a pool) and a trace's request lengths, the
rate r is feasible when a replay of the first `requests` requests arriving as a Poisson process at r
(seed fixed) has p99 TTFT <= the TTFT SLO and p99 TPOT <= the TPOT SLO (model/summary.py). With the seed
fixed the arrival times at rate r are those at rate 1 divided by r (numpy's exponential draws scale with
their mean), so every rate replays the same arrival pattern, compressed.

Search: bracketing from a first guess (`requests` / the saturated replay's makespan, an upper bound on
what the configuration can serve), doubling up while feasible or halving down while not (at most
`BRACKET_STEPS` times each way), then bisection on [feasible, infeasible] until
(high - low) / low <= `rel_tol`; the answer is `low`, the highest rate seen feasible. Feasibility need not
be monotone in the rate on a finite trace (a burst can miss at one rate and slip between iterations at
a higher one): the answer is a rate that meets the SLO with an infeasible one within `rel_tol` above it.

Cost at capacity: USD per million output tokens = cost per hour / (3600 x r x mean output tokens per
request) x 1e6, the rate at which a deployment at r produces tokens in steady state (derived).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial

import numpy as np

from lamina_bench.catalog.workloads import Trace, check_request_count
from lamina_bench.errors import UserInputError
from lamina_bench.model.cost import mixes_cost_usd_per_hour
from lamina_bench.model.iteration import IterationModel, iteration_model
from lamina_bench.model.prefill_pool import prefill_pool
from lamina_bench.model.scheduler import Scheduler
from lamina_bench.model.simulator import SimulationResult, check_slos, simulate
from lamina_bench.model.system import SystemConfig

DEFAULT_CAPACITY_REQUESTS = 1000
DEFAULT_REL_TOL = 0.02
BRACKET_STEPS = 12  # doublings or halvings before giving up (a factor of 4096 from the first guess)


@dataclass(frozen=True)
class Probe:
    """One replay of the search: the rate and what it measured."""

    rate_per_s: float
    p99_ttft_ms: float | None
    p99_tpot_ms: float | None
    feasible: bool


@dataclass(frozen=True)
class CapacityResult:
    """The capacity of one configuration at one SLO (module doc); `rate_per_s` None: no rate tried meets it."""

    config: str
    model: str
    trace: str
    requests: int
    seed: int
    ttft_slo_ms: float
    tpot_slo_ms: float
    rel_tol: float
    rate_per_s: float | None
    usd_per_mtok: float | None
    cost_usd_per_hour: float | None
    at_capacity: SimulationResult | None  # the replay at `rate_per_s`
    probes: tuple[Probe, ...]
    source: str
    bounded: bool = True  # False: every rate tried met the SLO; the capacity is at least `rate_per_s`

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("at_capacity", "probes")}
        out["capacity_req_per_s"] = out.pop("rate_per_s")
        out["capacity_usd_per_mtok"] = out.pop("usd_per_mtok")
        out["probes"] = [p.__dict__ for p in self.probes]
        out["at_capacity"] = None if self.at_capacity is None else self.at_capacity.to_dict()
        return out


def meets_slo(result: SimulationResult, ttft_slo_ms: float, tpot_slo_ms: float) -> bool:
    """p99 TTFT and p99 TPOT within the SLOs (a run whose requests all have one token has no TPOT: met)."""
    ttft, tpot = result.p99_ttft_ms, result.p99_tpot_ms
    return ttft is not None and ttft <= ttft_slo_ms and (tpot is None or tpot <= tpot_slo_ms)


def capacity(
    config: SystemConfig,
    trace: Trace,
    ttft_slo_ms: float,
    tpot_slo_ms: float,
    requests: int | None = None,
    seed: int = 0,
    rel_tol: float = DEFAULT_REL_TOL,
    model: IterationModel | None = None,
    prefill_model: IterationModel | None = None,
) -> CapacityResult:
    """The capacity of `config` on `trace`'s first `requests` requests (None: the first
    `DEFAULT_CAPACITY_REQUESTS`, or all of a shorter trace) at the SLOs (module doc)."""
    if ttft_slo_ms is None or tpot_slo_ms is None:
        raise UserInputError("capacity needs both --ttft-slo-ms and --tpot-slo-ms")
    check_slos(ttft_slo_ms, tpot_slo_ms)
    if not config.scheduler.paged:
        raise UserInputError(
            "capacity needs --scheduler vllm (reserve-all excludes prefill, so it has no TTFT)"
        )
    if not 0 < rel_tol < 1:
        raise UserInputError(f"relative tolerance must be in (0, 1), got {rel_tol}")
    if requests is None:
        trace = trace.head(min(DEFAULT_CAPACITY_REQUESTS, len(trace)))
    else:
        if requests < 1:
            raise UserInputError(f"--requests must be >= 1, got {requests}")
        check_request_count(requests, trace)
        trace = trace.head(requests)
    model = model or iteration_model(config)
    if prefill_model is None and config.scheduler.prefill_pool is not None:  # built once for every probe
        prefill_model = prefill_pool(config, model).serving.base
    probes: dict[float, tuple[Probe, SimulationResult]] = {}

    def probe(rate: float) -> bool:
        result = simulate(config, trace, "poisson", rate, seed, model=model, prefill_model=prefill_model,
                          ttft_slo_ms=ttft_slo_ms, tpot_slo_ms=tpot_slo_ms)  # fmt: skip
        ok = meets_slo(result, ttft_slo_ms, tpot_slo_ms)
        probes[rate] = (Probe(rate, result.p99_ttft_ms, result.p99_tpot_ms, ok), result)
        return ok

    low, high = _bracket(probe, _first_guess(config, trace, model, prefill_model))
    if low is not None and high is not None:
        while (high - low) / low > rel_tol:
            mid = 0.5 * (low + high)
            low, high = (mid, high) if probe(mid) else (low, mid)
    at = probes[low][1] if low is not None else None
    cost = mixes_cost_usd_per_hour(config.compute, config.attention, config.scheduler.prefill_pool)
    usd = None
    if low is not None and cost is not None:
        usd = cost / (3600.0 * low * float(np.mean(trace.output_len))) * 1e6
    return CapacityResult(
        config=_label(config), model=config.model.name, trace=trace.name, requests=len(trace), seed=seed,
        ttft_slo_ms=ttft_slo_ms, tpot_slo_ms=tpot_slo_ms, rel_tol=rel_tol, rate_per_s=low, usd_per_mtok=usd,
        cost_usd_per_hour=cost, at_capacity=at, probes=tuple(p for p, _ in probes.values()),
        source=model.source if at is None else at.source, bounded=high is not None,
    )  # fmt: skip


def _label(config: SystemConfig) -> str:
    pool = config.scheduler.prefill_pool
    return config.label() + ("" if pool is None else f" + prefill pool {pool}")


def _first_guess(config, trace, model, prefill_model) -> float:
    """Requests per second of a saturated replay (everything queued at t = 0): an upper bound on capacity."""
    saturated = simulate(config, trace, "saturate", model=model, prefill_model=prefill_model)
    return max(saturated.request_throughput or 0.0, 1e-6)


def _bracket(probe, guess: float) -> tuple[float | None, float | None]:
    """(feasible, infeasible) rates around `guess` (doubling or halving); (None, x) when no rate tried
    meets the SLO; (x, None) when every rate tried does (the SLO never binds within the steps)."""
    if probe(guess):
        low = guess
        for _ in range(BRACKET_STEPS):
            if not probe(low * 2):
                return low, low * 2
            low *= 2
        return low, None
    high = guess
    for _ in range(BRACKET_STEPS):
        if probe(high / 2):
            return high / 2, high
        high /= 2
    return None, high


RANK_REQUESTS = 500  # requests per capacity search when ranking a search's candidates


def rank_by_capacity(candidates, trace: Trace, ttft_slo_ms: float, tpot_slo_ms: float, map_fn=map) -> list:
    """Search candidates (model/search.py) with their capacity under the vLLM scheduler (default knobs,
    colocated chunked prefill, no batch cap), cheapest USD per M output tokens at capacity first; those
    without a capacity last (stable). Each candidate's search goes through `map_fn` (any map: the built-in
    one, or a cluster's, sweep/ray_map.py)."""
    found = list(map_fn(partial(_with_capacity, trace=trace, ttft_slo_ms=ttft_slo_ms, tpot_slo_ms=tpot_slo_ms),
                        candidates))  # fmt: skip

    def cost(c) -> float:
        return math.inf if c.capacity is None or c.capacity.usd_per_mtok is None else c.capacity.usd_per_mtok

    return sorted(found, key=cost)


def _with_capacity(cand, trace: Trace, ttft_slo_ms: float, tpot_slo_ms: float):
    """`cand` with its capacity (None where vLLM's scheduler cannot run its configuration)."""
    config = replace(cand.config, scheduler=Scheduler("vllm"), max_batch_size=None)
    try:
        found = capacity(config, trace, ttft_slo_ms, tpot_slo_ms, requests=min(RANK_REQUESTS, len(trace)))
    except UserInputError:  # e.g. the weights fit the reserve-all budget but not vLLM's
        found = None
    return replace(cand, capacity=found)
