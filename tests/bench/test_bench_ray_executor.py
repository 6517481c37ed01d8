"""Overhead of the Ray executor (pytest-benchmark; skipped by default, run with
`pytest tests/bench/test_bench_ray_executor.py --benchmark-only`).

Target: the quick sweep (12 points: measured, predicted from a profile of this machine, and modeled)
through `--executor ray` on a running local cluster (tests/ray_support.py: a head and one more node on
127.0.0.1) takes at most 1.3x the local executor's wall time, both measured here, one after the other.
Connecting to the cluster is included; starting it is not (a cluster outlives many sweeps).
"""

from __future__ import annotations

import io
import time

import pytest

from lamina_bench.results.store import RunStore
from lamina_bench.sweep.run import LocalExecutor, Progress, run_sweep
from lamina_bench.sweep.spec import QUICK_SPEC, load_spec

ray_executor = pytest.importorskip("lamina_bench.sweep.ray_executor", reason="Ray is not installed")
MAX_RATIO = 1.3


def _sweep(executor, tmp_path, name: str) -> float:
    spec = load_spec(QUICK_SPEC)
    store = RunStore.create(tmp_path, name, devices=[])
    t0 = time.perf_counter()
    outcome = run_sweep(
        spec, store, list(spec.points), progress=Progress(12, io.StringIO()), executor=executor
    )
    wall_s = time.perf_counter() - t0
    assert outcome.ran == len(spec.points) == 12 and outcome.failed == 0
    return wall_s


def test_bench_ray_executor_overhead_on_the_quick_sweep(benchmark, ray_cluster, tmp_path):
    local_s = _sweep(LocalExecutor(), tmp_path, "local")
    executor = ray_executor.RayExecutor(address=ray_cluster.address)
    ray_s = []
    benchmark.pedantic(lambda: ray_s.append(_sweep(executor, tmp_path, f"ray{len(ray_s)}")), rounds=1)
    ratio = ray_s[-1] / local_s
    benchmark.extra_info.update(local_s=local_s, ray_s=ray_s[-1], ratio=ratio)
    print(f"quick sweep: local {local_s:.1f} s, ray {ray_s[-1]:.1f} s, ratio {ratio:.2f} (measured)")
    assert ratio <= MAX_RATIO, f"ray {ray_s[-1]:.1f} s vs local {local_s:.1f} s: {ratio:.2f}x"
