"""Simulator microbenchmarks: a short trace replay of both systems (the full-trace speed targets live in
tests/lamina_bench/test_bench_simulate.py).

Skipped by default; run with `pytest tests/bench --benchmark-only --benchmark-json=FILE`.
"""

from __future__ import annotations

import pytest

from lamina_bench.catalog.devices import parse_mix
from lamina_bench.catalog.models import get_model
from lamina_bench.catalog.workloads import load_trace
from lamina_bench.model.simulator import simulate
from lamina_bench.model.system import SystemConfig

REQUESTS = 2000


@pytest.mark.parametrize("system", ["homogeneous", "lamina"])
def test_bench_simulate_2000_requests(benchmark, system):
    trace = load_trace("azure-conv")  # file parsing is not part of the benchmark
    spec = get_model("llama3-70b")
    if system == "lamina":
        config = SystemConfig("lamina", spec, parse_mix("2xH100"), parse_mix("4xH20"))
    else:
        config = SystemConfig("homogeneous", spec, parse_mix("4xH100"))
    result = benchmark(simulate, config, trace, requests=REQUESTS)
    assert result.requests + result.rejected_requests == REQUESTS and result.generated_tokens > 0
