"""Speed of the simulator (pytest-benchmark; skipped by default, run with --benchmark-only).

Targets (issue 4), on one core: one full Azure-Conv replay (19,366 requests) < 2 s; the paper's nine
comparisons (3 models x 3 traces x 2 systems = 18 full replays) < 30 s.
"""

import pytest

from lamina_bench import simulate as sim
from lamina_bench.hardware import parse_mix
from lamina_bench.models import get_model
from lamina_bench.workloads import load_trace


@pytest.mark.parametrize("system", ["homogeneous", "lamina"])
def test_bench_full_azure_conv_replay(benchmark, system):
    trace = load_trace("azure-conv")
    spec = get_model("llama3-70b")
    if system == "lamina":
        config = sim.SystemConfig("lamina", spec, parse_mix("2xH100"), parse_mix("4xH20"))
    else:
        config = sim.SystemConfig("homogeneous", spec, parse_mix("4xH100"))
    result = benchmark.pedantic(sim.simulate, args=(config, trace), rounds=5, iterations=1)
    assert result.requests == len(trace) == 19_366
    assert benchmark.stats.stats.max < 2.0


def test_bench_nine_comparisons(benchmark):
    for name in sim.PAPER_TRACES:
        load_trace(name)  # file parsing is not part of the simulation
    rows = benchmark.pedantic(sim.paper_comparisons, rounds=1, iterations=1)
    assert len(rows) == 9
    assert benchmark.stats.stats.max < 30.0
