"""Results store: schema round trip, atomic writes, SIGKILL safety, shard merge, point ids, median CIs."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from lamina_bench import results
from lamina_bench.errors import UserInputError
from lamina_bench.results import (
    CI_METRICS,
    POINT_COLUMNS,
    RunStore,
    aggregate_repeats,
    atomic_write_bytes,
    median_ci95,
    merge_runs,
    normalize_point,
    point_id,
)
from lamina_bench.telemetry import TelemetrySample

REPO = Path(__file__).resolve().parents[2]


def make_row(i: int, **overrides) -> dict:
    """A measured ok row for configuration i, with metrics worked from i."""
    config = {"mode": "measured", "model": "bench-llama-gqa", "system": "lamina", "batch_size": i}
    row = {
        "point_id": point_id(config),
        "model": "bench-llama-gqa",
        "system": "lamina",
        "compute": "1xcpu",
        "attention": "1xcpu",
        "trace": "synthetic",
        "batch_size": i,
        "context_len": 128,
        "pipeline_batches": 2,
        "dtype": "fp32",
        "repeat": 0,
        "source": "measured",
        "status": "ok",
        "throughput_tok_per_s": 100.0 + i,
        "tbt_p50_ms": 10.0 * i,
        "energy_j": None,  # no GPU here: missing, not 0
        "repro_command": f"lamina-bench run spec.toml --only {i}",
        "wall_s": 1.5,
    }
    return {**row, **overrides}


def new_store(tmp_path: Path, run_id: str = "run-a", **kwargs) -> RunStore:
    return RunStore.create(
        tmp_path, run_id=run_id, spec={"name": "t"}, argv=["lamina-bench", "run"], devices=[], **kwargs
    )


# ---- point ids ----------------------------------------------------------------------------------------


def test_point_id_stable_across_runs_and_key_order():
    a = point_id({"model": "llama-33b", "batch_size": 8, "system": "lamina"})
    b = point_id({"system": "lamina", "batch_size": 8, "model": "llama-33b"})
    # sha256('{"batch_size":8,"model":"llama-33b","system":"lamina"}')[:16], computed once and pinned
    assert a == b == "34676782c429ed55"
    assert point_id({"model": "llama-33b", "batch_size": 16, "system": "lamina"}) != a
    code = "from lamina_bench.results import point_id; print(point_id({'system': 'lamina', 'batch_size': 8, 'model': 'llama-33b'}))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # another process, another hash seed: same id
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, check=True
    )
    assert out.stdout.strip() == a


def test_point_id_agrees_with_sweep():
    sweep = pytest.importorskip("lamina_bench.sweep")
    config = {"mode": "modeled", "model": "llama-65b", "compute": "2xH100", "attention": "4xH20"}
    assert sweep.point_id(config) == point_id(config)


# ---- schema -------------------------------------------------------------------------------------------


def test_schema_round_trip_via_parquet(tmp_path):
    store = new_store(tmp_path)
    failed = make_row(
        2, status="failed", error="RuntimeError: out of memory", throughput_tok_per_s=None, tbt_p50_ms=None
    )
    ci_row = make_row(
        3, repeat=None, repeats=5, throughput_tok_per_s_ci_low=98.0, throughput_tok_per_s_ci_high=105.0
    )
    extra = make_row(4, extra_json=json.dumps({"arrival": "poisson"}))
    stored = [store.add_point(r) for r in (make_row(1), failed, ci_row, extra)]
    store.finalize()

    on_disk = pd.read_parquet(tmp_path / "run-a" / "points.parquet")
    assert list(on_disk.columns) == list(POINT_COLUMNS)
    assert {c: str(t) for c, t in on_disk.dtypes.items()} == {
        c: str(pd.Series(dtype=t).dtype) for c, t in POINT_COLUMNS.items()
    }
    reopened = RunStore.open(tmp_path / "run-a")
    frame = reopened.points()
    by_id = {r["point_id"]: r for r in frame.to_dict(orient="records")}
    for row in stored:
        back = {k: results._normalize_scalar(v) for k, v in by_id[row["point_id"]].items()}
        assert back == row
    f = by_id[failed["point_id"]]
    assert f["status"] == "failed" and math.isnan(f["throughput_tok_per_s"]) and math.isnan(f["energy_j"])
    assert by_id[stored[0]["point_id"]]["run_id"] == "run-a"
    assert frame["repeats"].isna().sum() == 3 and frame["batch_size"].dtype == "Int64"


def test_normalize_point_rejects_bad_rows():
    ok = make_row(1)
    cases = [
        ({"throughput": 1.0}, "unknown points columns \\['throughput'\\]"),
        ({"source": "guessed"}, "source must be one of measured, modeled, derived"),
        ({"status": "failed"}, "failed row needs an error message"),
        ({"error": "boom"}, "ok row must have none"),
        ({"point_id": "xyz"}, "16 lower-case hex"),
        ({"batch_size": 2.5}, "batch_size takes an integer"),
        ({"model": 7}, "model takes a string"),
        ({"tbt_p50_ms": "fast"}, "tbt_p50_ms takes a number"),
        ({"wall_s": True}, "wall_s takes a number"),
        ({"extra_json": "[1]"}, "extra_json must encode a JSON object"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            normalize_point({**ok, **change})
    assert normalize_point({**ok, "batch_size": 4.0, "tbt_p50_ms": float("nan")})["tbt_p50_ms"] is None


def test_duplicate_point_needs_replace_and_resume_lists(tmp_path):
    store = new_store(tmp_path)
    store.add_point(make_row(1))
    failed = store.add_point(make_row(2, status="failed", error="boom"))
    with pytest.raises(ValueError, match="already stored"):
        store.add_point(make_row(1))
    assert store.finished_point_ids() == {make_row(1)["point_id"], failed["point_id"]}
    assert store.finished_point_ids(include_failed=False) == {make_row(1)["point_id"]}
    store.add_point(make_row(2), replace=True)  # the failed point rerun and fixed
    assert store.finished_point_ids(include_failed=False) == {make_row(1)["point_id"], failed["point_id"]}


def test_resume_after_finalize_keeps_every_point(tmp_path):
    store = new_store(tmp_path)
    store.add_point(make_row(1))
    store.finalize()
    again = RunStore.open(store.path)
    again.add_point(make_row(2))
    assert sorted(again.points()["batch_size"].tolist()) == [1, 2]
    again.finalize()
    assert len(pd.read_parquet(store.path / "points.parquet")) == 2


def test_manifest_contents(tmp_path):
    store = RunStore.create(
        tmp_path, spec={"name": "s", "repeats": 3}, argv=["lamina-bench", "run", "a b.toml"]
    )
    manifest = json.loads((store.path / "manifest.json").read_text())
    assert store.path.parent == tmp_path and manifest["run_id"] == store.path.name
    assert manifest["status"] == "running" and manifest["end_time"] is None
    assert manifest["spec"] == {"name": "s", "repeats": 3}
    assert manifest["command_line"] == "lamina-bench run 'a b.toml'"
    assert set(manifest["git"]) == {"commit", "dirty", "error"}
    assert manifest["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert manifest["versions"]["pandas"] == pd.__version__
    assert manifest["host"] and "nvidia_driver" in manifest
    assert isinstance(manifest["devices"], list | dict)  # the detected devices, or why they are missing
    store.add_point(make_row(1))
    store.add_point(make_row(2, status="failed", error="boom"))
    store.finalize()
    manifest = json.loads((store.path / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["end_time"] >= manifest["start_time"]
    assert (manifest["points_ok"], manifest["points_failed"]) == (1, 1)


def test_create_and_open_errors(tmp_path):
    new_store(tmp_path)
    with pytest.raises(UserInputError, match="already exists; resume it"):
        new_store(tmp_path)
    with pytest.raises(UserInputError, match="must be letters, digits"):
        RunStore.create(tmp_path, run_id="../escape", devices=[])
    with pytest.raises(UserInputError, match="has no manifest.json"):
        RunStore.open(tmp_path)


def test_telemetry_and_requests_tables(tmp_path):
    store = new_store(tmp_path)
    store.add_telemetry([TelemetrySample(0, 1.0, 1e9, "p", power_w=300.0, energy_counter_j=10.0)])
    store.add_telemetry([TelemetrySample(0, 1.1, 1e9, "p", power_w=310.0), TelemetrySample(1, 1.1, 1e9)])
    store.add_telemetry([])
    store.add_requests([{"point_id": "p", "request": 0, "tbt_mean_ms": 12.5}])
    with pytest.raises(ValueError, match="need a point_id column"):
        store.add_requests([{"request": 1}])
    store.finalize()
    table = pd.read_parquet(store.path / "telemetry.parquet")
    assert table["power_w"].tolist()[:2] == [300.0, 310.0] and math.isnan(table["power_w"].iloc[2])
    assert set(table["run_id"]) == {"run-a"} and len(store.telemetry()) == 3
    assert store.requests()["tbt_mean_ms"].tolist() == [12.5]


# ---- atomicity ----------------------------------------------------------------------------------------


def test_atomic_write_failure_leaves_old_file(tmp_path, monkeypatch):
    target = tmp_path / "f.json"
    target.write_text("old")

    def crash(src, dst):
        raise KeyboardInterrupt  # as if interrupted between the temp write and the rename

    monkeypatch.setattr(results.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"new, longer content")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["f.json"]


def _run_child(script: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, stderr=subprocess.PIPE)


def test_crash_between_temp_write_and_replace(tmp_path):
    """A process that dies right before os.replace leaves the old point and a temp file readers skip."""
    child = _run_child(f"""
        import os
        from lamina_bench import results
        from tests.lamina_bench.test_results import make_row, new_store
        from pathlib import Path
        store = new_store(Path({str(tmp_path)!r}))
        store.add_point(make_row(1))
        results.os.replace = lambda src, dst: os._exit(9)   # die with the new temp file written
        store.add_point(make_row(1, tbt_p50_ms=999.0), replace=True)
    """)
    assert child.wait(timeout=60) == 9, child.stderr.read().decode()
    folder = tmp_path / "run-a" / "points"
    assert any(name.endswith(".tmp") for name in os.listdir(folder))  # the crash left its temp file
    store = RunStore.open(tmp_path / "run-a")
    (row,) = store.points().to_dict(orient="records")
    assert row["tbt_p50_ms"] == 10.0  # the old, whole point
    assert store.finished_point_ids() == {make_row(1)["point_id"]}


def test_sigkill_while_adding_points_leaves_whole_points(tmp_path):
    child = _run_child(f"""
        from pathlib import Path
        from lamina_bench.telemetry import TelemetrySample
        from tests.lamina_bench.test_results import make_row, new_store
        store = new_store(Path({str(tmp_path)!r}))
        for i in range(1, 100_000):
            store.add_point(make_row(i))
            store.add_telemetry([TelemetrySample(0, float(i), 0.0, power_w=float(i))] * 50)
    """)
    folder = tmp_path / "run-a" / "points"
    deadline = time.monotonic() + 60
    while len(list(folder.glob("*.json"))) < 30:  # glob of a missing folder is empty
        assert child.poll() is None, child.stderr.read().decode()
        assert time.monotonic() < deadline, "the child stored fewer than 30 points in 60 s"
        time.sleep(0.01)
    time.sleep(random.uniform(0.0, 0.05))  # land anywhere inside a write
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL
    store = RunStore.open(tmp_path / "run-a")
    frame = store.points()  # every stored point parses and validates
    n = len(frame)
    assert n >= 30
    assert sorted(frame["batch_size"].tolist()) == list(range(1, n + 1))  # no hole, no partial point
    assert frame["throughput_tok_per_s"].tolist() == [100.0 + b for b in frame["batch_size"]]
    assert store.finished_point_ids() == {make_row(i)["point_id"] for i in range(1, n + 1)}
    telemetry = store.telemetry()
    assert len(telemetry) % 50 == 0 and len(telemetry) // 50 in (n - 1, n)  # whole parts only
    store.finalize()  # a killed run can still be consolidated
    assert len(pd.read_parquet(store.path / "points.parquet")) == n


# ---- merging shards -----------------------------------------------------------------------------------


def test_merge_two_shards_equals_union(tmp_path):
    shard0, shard1 = new_store(tmp_path, "shard0"), new_store(tmp_path, "shard1")
    for i in (1, 3, 5):
        shard0.add_point(make_row(i))
    for i in (2, 4):
        shard1.add_point(make_row(i))
    shard1.add_point(make_row(5, wall_s=9.0, repro_command="other"))  # same point, volatile fields differ
    shard0.add_telemetry([TelemetrySample(0, 1.0, 0.0, power_w=1.0)])
    shard1.add_telemetry([TelemetrySample(0, 2.0, 0.0, power_w=2.0)])
    merged = merge_runs([shard0.path, shard1.path], tmp_path / "merged", argv=["lamina-bench", "merge"])

    union = {r["point_id"]: r for s in (shard0, shard1) for r in s.points().to_dict(orient="records")}
    frame = pd.read_parquet(merged.path / "points.parquet")
    assert sorted(frame["point_id"]) == sorted(union) and len(frame) == 5
    assert sorted(frame["batch_size"]) == [1, 2, 3, 4, 5]
    assert set(frame["run_id"]) == {"shard0", "shard1"}  # provenance kept
    assert sorted(merged.telemetry()["power_w"]) == [1.0, 2.0]
    manifest = json.loads((merged.path / "manifest.json").read_text())
    assert [m["run_id"] for m in manifest["merged_from"]] == ["shard0", "shard1"]
    assert RunStore.open(merged.path).finished_point_ids() == set(union)


def test_merge_conflicting_duplicate_is_an_error(tmp_path):
    shard0, shard1 = new_store(tmp_path, "shard0"), new_store(tmp_path, "shard1")
    shard0.add_point(make_row(1))
    shard1.add_point(make_row(1, throughput_tok_per_s=50.0))
    with pytest.raises(
        UserInputError, match=r"differs between .*shard0 and .*shard1 in throughput_tok_per_s"
    ):
        merge_runs([shard0.path, shard1.path], tmp_path / "merged")


# ---- median and its confidence interval ---------------------------------------------------------------


def test_median_ci95_hand_worked():
    ci = median_ci95([7, 3, 10, 1, 5, 9, 2, 8, 6, 4])  # n = 10: k = 2, coverage 1 - 2 * 11/1024
    assert (ci.median, ci.low, ci.high, ci.n) == (5.5, 2.0, 9.0, 10)
    assert ci.coverage == pytest.approx(1 - 22 / 1024)
    six = median_ci95([1, 2, 3, 4, 5, 6])  # n = 6: only (min, max) reaches 95%: 1 - 2/64
    assert (six.low, six.high, six.coverage) == (1.0, 6.0, pytest.approx(0.96875))
    three = median_ci95([3.0, 1.0, 2.0])  # n = 3: (min, max) covers only 75%, and says so
    assert (three.median, three.low, three.high, three.coverage) == (2.0, 1.0, 3.0, 0.75)
    assert median_ci95([1.0, 2.0]) is None and median_ci95([]) is None
    with pytest.raises(ValueError, match="NaN"):
        median_ci95([1.0, float("nan"), 2.0])


def test_median_ci95_coverage_against_simulation():
    """Reference: draw from an exponential (true median ln 2) and count how often the CI holds it."""
    rng = random.Random(0)
    for n in (8, 20, 41):
        trials = 2000
        hits = sum(
            (ci := median_ci95([rng.expovariate(1.0) for _ in range(n)])).low <= math.log(2) <= ci.high
            for _ in range(trials)
        )
        expected = median_ci95(list(range(n))).coverage
        assert expected >= 0.95
        assert abs(hits / trials - expected) < 4 * math.sqrt(expected * (1 - expected) / trials) + 1e-3


def test_aggregate_repeats():
    runs = [
        make_row(1, repeat=r, throughput_tok_per_s=t, wall_s=1.0)
        for r, t in enumerate([10, 30, 20, 50, 40, 60])
    ]
    failed = make_row(1, repeat=6, status="failed", error="boom", throughput_tok_per_s=None)
    agg = aggregate_repeats([*runs, failed], point_id({"aggregate": 1}))
    row = normalize_point(agg)  # a valid points row
    assert row["repeat"] is None and row["repeats"] == 6 and row["status"] == "ok"
    assert row["throughput_tok_per_s"] == 35.0  # median of 10..60
    assert (row["throughput_tok_per_s_ci_low"], row["throughput_tok_per_s_ci_high"]) == (10.0, 60.0)
    assert row["tbt_p50_ms"] == 10.0 and row["tbt_p50_ms_ci_low"] == 10.0
    assert row["energy_j"] is None and row["energy_j_ci_low"] is None  # no values: missing, not 0
    assert row["wall_s"] == 7.5  # every repeat's time, the failed one's 1.5 s included
    assert json.loads(row["extra_json"]) == {"failed_repeats": 1, "first_error": "boom"}
    assert {f"{m}_ci_low" for m in CI_METRICS} <= set(POINT_COLUMNS)
    two = normalize_point(aggregate_repeats(runs[:2], point_id({"aggregate": 2})))
    assert two["throughput_tok_per_s"] == 20.0 and two["throughput_tok_per_s_ci_low"] is None  # < 3 values
    all_failed = aggregate_repeats([failed], point_id({"aggregate": 3}))
    assert all_failed["status"] == "failed" and all_failed["error"] == "all 1 repeats failed: boom"
    with pytest.raises(ValueError, match="rows differ in batch_size"):
        aggregate_repeats([make_row(1), make_row(2)], point_id({"x": 1}))
