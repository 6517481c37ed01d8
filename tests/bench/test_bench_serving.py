"""Speed of the vllm scheduler (pytest-benchmark; skipped by default, run with `pytest tests/bench
--benchmark-only`), beside the same replays under reserve-all: a short replay of both systems and one
full Azure-Conv replay (19,366 requests; target on one core: under 2 s, as reserve-all's)."""

from __future__ import annotations

import pytest

from lamina_bench.catalog.devices import parse_mix
from lamina_bench.catalog.models import get_model
from lamina_bench.catalog.workloads import load_trace
from lamina_bench.model.scheduler import Scheduler
from lamina_bench.model.simulator import simulate
from lamina_bench.model.system import SystemConfig

REQUESTS = 2000


def _config(system: str, scheduler: str) -> SystemConfig:
    spec, sched = get_model("llama3-70b"), Scheduler(scheduler)
    if system == "lamina":
        return SystemConfig("lamina", spec, parse_mix("2xH100"), parse_mix("4xH20"), scheduler=sched)
    return SystemConfig("homogeneous", spec, parse_mix("4xH100"), scheduler=sched)


@pytest.mark.parametrize("scheduler", ["reserve-all", "vllm"])
@pytest.mark.parametrize("system", ["homogeneous", "lamina"])
def test_bench_serving_2000_requests(benchmark, system, scheduler):
    trace = load_trace("azure-conv")
    result = benchmark(simulate, _config(system, scheduler), trace, requests=REQUESTS)
    assert result.requests + result.rejected_requests == REQUESTS and result.generated_tokens > 0


@pytest.mark.parametrize("system", ["homogeneous", "lamina"])
def test_bench_vllm_full_azure_conv_replay(benchmark, system):
    trace = load_trace("azure-conv")
    result = benchmark.pedantic(simulate, args=(_config(system, "vllm"), trace), rounds=3, iterations=1)
    assert result.requests == len(trace) == 19_366
    assert benchmark.stats.stats.max < 2.0
