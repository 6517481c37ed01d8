"""Simulator speed (pytest-benchmark; skipped by default, run with `pytest tests/bench --benchmark-only`).

A short replay of both systems (the regression microbenchmark compared in CI), and the speed targets on
one core: one full Azure-Conv replay (19,366 requests) under 2 s; the paper's nine comparisons (3 models
x 3 traces x 2 systems = 18 full replays) under 30 s.
"""

from __future__ import annotations

import pytest

from lamina_bench.catalog.devices import parse_mix
from lamina_bench.catalog.models import get_model
from lamina_bench.catalog.workloads import load_trace
from lamina_bench.model.paper import PAPER_TRACES, paper_comparisons
from lamina_bench.model.simulator import simulate
from lamina_bench.model.system import SystemConfig

REQUESTS = 2000


def _config(system: str) -> SystemConfig:
    spec = get_model("llama3-70b")
    if system == "lamina":
        return SystemConfig("lamina", spec, parse_mix("2xH100"), parse_mix("4xH20"))
    return SystemConfig("homogeneous", spec, parse_mix("4xH100"))


@pytest.mark.parametrize("system", ["homogeneous", "lamina"])
def test_bench_simulate_2000_requests(benchmark, system):
    trace = load_trace("azure-conv")  # file parsing is not part of the benchmark
    result = benchmark(simulate, _config(system), trace, requests=REQUESTS)
    assert result.requests + result.rejected_requests == REQUESTS and result.generated_tokens > 0


@pytest.mark.parametrize("system", ["homogeneous", "lamina"])
def test_bench_full_azure_conv_replay(benchmark, system):
    trace = load_trace("azure-conv")
    result = benchmark.pedantic(simulate, args=(_config(system), trace), rounds=5, iterations=1)
    assert result.requests == len(trace) == 19_366
    assert benchmark.stats.stats.max < 2.0


def test_bench_nine_comparisons(benchmark):
    for name in PAPER_TRACES:
        load_trace(name)  # file parsing is not part of the simulation
    rows = benchmark.pedantic(paper_comparisons, rounds=1, iterations=1)
    assert len(rows) == 9
    assert benchmark.stats.stats.max < 30.0
