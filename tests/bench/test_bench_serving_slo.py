"""Speed of serving at an SLO (pytest-benchmark; skipped by default, run with `pytest tests/bench
--benchmark-only`): the full Azure-Conv replay (19,366 requests) with prefill on a pool and the trace's
timestamps (target 0.2 s, with the time table of the configuration built), and one capacity search (target
3 s, its model and table built inside). A warm-up round compiles the replay loop (numba, once per install)."""

from __future__ import annotations

import pytest

from lamina_bench.catalog.devices import parse_mix
from lamina_bench.catalog.models import get_model
from lamina_bench.catalog.workloads import load_trace
from lamina_bench.model.capacity import capacity
from lamina_bench.model.iteration import iteration_model
from lamina_bench.model.scheduler import Scheduler
from lamina_bench.model.simulator import simulate
from lamina_bench.model.system import SystemConfig

REPLAY_TARGET_S, CAPACITY_TARGET_S = 0.2, 3.0


def _config(system: str, pool: str | None) -> SystemConfig:
    spec, sched = get_model("llama3-70b"), Scheduler("vllm", prefill_pool=parse_mix(pool) if pool else None)
    if system == "lamina":
        return SystemConfig("lamina", spec, parse_mix("2xH100"), parse_mix("4xH20"), scheduler=sched)
    return SystemConfig("homogeneous", spec, parse_mix("4xH100"), scheduler=sched)


@pytest.mark.parametrize("pool", [None, "2xH100"])
@pytest.mark.parametrize("system", ["homogeneous", "lamina"])
def test_bench_full_azure_conv_with_prefill_and_timestamps(benchmark, system, pool):
    trace, config = load_trace("azure-conv"), _config(system, pool)
    model = iteration_model(config)
    result = benchmark.pedantic(
        simulate,
        args=(config, trace, "trace"),
        kwargs={"model": model},
        rounds=3,
        iterations=1,
        warmup_rounds=1,
    )
    assert result.requests == len(trace) == 19_366 and result.p99_ttft_ms > 0
    assert benchmark.stats.stats.max < REPLAY_TARGET_S


@pytest.mark.parametrize("pool", [None, "2xH100"])
@pytest.mark.parametrize("system", ["homogeneous", "lamina"])
def test_bench_capacity_search(benchmark, system, pool):
    trace, config = load_trace("azure-conv"), _config(system, pool)
    found = benchmark.pedantic(
        capacity, args=(config, trace, 2000.0, 100.0), rounds=2, iterations=1, warmup_rounds=1
    )
    assert found.rate_per_s is not None and found.requests == 1000
    assert benchmark.stats.stats.max < CAPACITY_TARGET_S
