"""Speed of the default sweep's modeled part (pytest-benchmark; skipped by default, run with
`pytest tests/bench --benchmark-only`).

Target on 2 cores: every configuration x batch-cap point of the embedded default sweep's [[modeled]]
blocks (at least 300 points over the three traces), simulated and stored, in at most 60 s.
"""

from __future__ import annotations

import io
import tomllib

from lamina_bench.catalog.workloads import TRACES, load_trace
from lamina_bench.results.store import RunStore
from lamina_bench.sweep.run import Progress, run_sweep
from lamina_bench.sweep.spec import DEFAULT_SPEC, parse_spec

LIMIT_S = 60.0


def test_bench_default_modeled_sweep(benchmark, tmp_path):
    raw = tomllib.loads(DEFAULT_SPEC.read_text())
    spec = parse_spec({"name": "default-modeled", "modeled": raw["modeled"]})
    assert len(spec.points) >= 300
    for name in TRACES:
        load_trace(name)  # file parsing is cached by the first sweep of a session either way
    outcomes = []

    def sweep():
        store = RunStore.create(tmp_path, spec=spec.raw)
        outcome = run_sweep(
            spec, store, list(spec.points), progress=Progress(len(spec.points), io.StringIO())
        )
        store.finalize()
        outcomes.append(outcome)

    benchmark.pedantic(sweep, rounds=1, iterations=1)
    outcome = outcomes[-1]
    assert outcome.ran == len(spec.points) and outcome.failed == 0
    assert benchmark.stats.stats.max <= LIMIT_S, (
        f"{len(spec.points)} points in {benchmark.stats.stats.max:.1f} s"
    )
