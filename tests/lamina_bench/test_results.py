"""Results store: typed rows round trip, the JSON files as the only source of truth, atomic writes,
SIGKILL safety, shard merge, point ids, median CIs, aggregation of repeats."""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from lamina_bench.cli import main
from lamina_bench.compare.sides import load_side
from lamina_bench.errors import UserInputError
from lamina_bench.results.files import atomic_write_bytes
from lamina_bench.results.merge import merge_runs
from lamina_bench.results.metrics import METRICS
from lamina_bench.results.row import PointRow, point_id
from lamina_bench.results.store import RunStore
from lamina_bench.results.table import columns
from lamina_bench.results.telemetry import TelemetrySample

REPO = Path(__file__).resolve().parents[2]


def make_row(i: int, **overrides) -> PointRow:
    """A measured ok row for configuration i, with metrics worked from i. An override named after a
    registered metric sets that metric (None removes it); other overrides set PointRow fields."""
    metrics = {"throughput_tok_per_s": 100.0 + i, "tbt_p50_ms": 10.0 * i}  # no energy_j: no GPU, unknown
    metrics.update({name: overrides.pop(name) for name in [k for k in overrides if k in METRICS]})
    config = {"mode": "measured", "model": "bench-llama-gqa", "system": "lamina", "batch_size": i}
    fields = dict(
        point_id=point_id(config),
        source="measured",
        model="bench-llama-gqa",
        system="lamina",
        compute="1xcpu",
        attention="1xcpu",
        trace="synthetic",
        batch_size=i,
        context_len=128,
        pipeline_batches=2,
        dtype="fp32",
        repeat=0,
        repro_command=f"lamina-bench run spec.toml --only {i}",
        wall_s=1.5,
        metrics={k: v for k, v in metrics.items() if v is not None},
    )
    return PointRow(**{**fields, **overrides})


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
    code = "from lamina_bench.results.row import point_id; print(point_id({'system': 'lamina', 'batch_size': 8, 'model': 'llama-33b'}))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # another process, another hash seed: same id
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, check=True
    )
    assert out.stdout.strip() == a


# ---- rows through the store ---------------------------------------------------------------------------


def test_rows_round_trip_through_the_store_and_the_flat_view(tmp_path):
    store = new_store(tmp_path)
    failed = make_row(
        2, status="failed", error="RuntimeError: out of memory", throughput_tok_per_s=None, tbt_p50_ms=None
    )
    ci_row = make_row(3, repeat=None, repeats=5, ci={"throughput_tok_per_s": (98.0, 105.0)})
    pools = {"compute": {"dense_ms": 3.0}, "attention": {"attention_ms": 1.0, "idle_ms": 0.5}}
    nested = make_row(
        4,
        settings={"arrival": "poisson", "rate_per_s": 2.5},
        pools=pools,
        whole_trace={"throughput_tok_per_s": 90.0},
        throughput_basis="saturated phase",
    )
    given = (make_row(1), failed, ci_row, nested)
    stored = [store.add_point(r) for r in given]
    for before, after in zip(given, stored, strict=True):  # add_point fills in run_id and timestamp only
        assert after.run_id == "run-a" and re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", after.timestamp)
        assert after == before.replace(run_id="run-a", timestamp=after.timestamp)
    store.finalize()
    reopened = RunStore.open(tmp_path / "run-a")
    assert {r.point_id: r for r in reopened.rows()} == {r.point_id: r for r in stored}

    frame = reopened.points()
    fixed = columns()
    assert list(frame.columns[: len(fixed)]) == list(fixed)
    assert {c: str(frame[c].dtype) for c in fixed} == {
        c: str(pd.Series(dtype=t).dtype) for c, t in fixed.items()
    }
    assert list(frame.columns[len(fixed) :]) == [
        "pools.attention.attention_ms",
        "pools.attention.idle_ms",
        "pools.compute.dense_ms",
        "settings.arrival",
        "settings.rate_per_s",
        "whole_trace.throughput_tok_per_s",
    ]
    by_id = frame.set_index("point_id")
    f = by_id.loc[failed.point_id]
    assert f["status"] == "failed" and math.isnan(f["throughput_tok_per_s"]) and math.isnan(f["energy_j"])
    ci_columns = ["throughput_tok_per_s_ci_low", "throughput_tok_per_s_ci_high"]
    assert by_id.loc[ci_row.point_id, ci_columns].tolist() == [98.0, 105.0]
    assert by_id.loc[nested.point_id, "settings.arrival"] == "poisson"
    assert by_id.loc[nested.point_id, "pools.compute.dense_ms"] == 3.0
    assert math.isnan(by_id.loc[ci_row.point_id, "pools.compute.dense_ms"])
    assert set(frame["run_id"]) == {"run-a"}
    assert frame["repeats"].isna().sum() == 3 and frame["batch_size"].dtype == "Int64"
    export = pd.read_parquet(store.path / "points.parquet")  # finalize's export: the same table
    assert list(export.columns) == list(frame.columns)
    assert export.set_index("point_id").sort_index().equals(by_id.sort_index())


def test_duplicate_point_needs_replace_and_resume_lists(tmp_path):
    store = new_store(tmp_path)
    store.add_point(make_row(1))
    failed = store.add_point(make_row(2, status="failed", error="boom"))
    with pytest.raises(ValueError, match="already stored"):
        store.add_point(make_row(1))
    assert store.finished_point_ids() == {make_row(1).point_id, failed.point_id}
    assert store.finished_point_ids(include_failed=False) == {make_row(1).point_id}
    store.add_point(make_row(2), replace=True)  # the failed point rerun and fixed
    assert store.finished_point_ids(include_failed=False) == {make_row(1).point_id, failed.point_id}
    (row,) = [r for r in store.rows() if r.point_id == failed.point_id]
    assert row.ok and row.error is None


def test_resume_after_finalize_keeps_every_point(tmp_path):
    store = new_store(tmp_path)
    store.add_point(make_row(1))
    store.finalize()
    again = RunStore.open(store.path)
    again.add_point(make_row(2))
    assert sorted(r.batch_size for r in again.rows()) == [1, 2]
    assert sorted(again.points()["batch_size"].tolist()) == [1, 2]
    again.finalize()
    assert len(pd.read_parquet(store.path / "points.parquet")) == 2


# ---- the point files are the only source of truth -------------------------------------------------------


def test_points_parquet_is_an_export_that_is_never_read_back(tmp_path):
    store = new_store(tmp_path)
    for i in (1, 2):
        store.add_point(make_row(i))
    store.finalize()
    export = store.path / "points.parquet"
    before = RunStore.open(store.path).rows()
    entries = load_side(store.path).entries
    edited = pd.read_parquet(export)
    edited["throughput_tok_per_s"] = 0.0  # the export disagrees with the rows ...
    pd.concat([edited, edited.head(1).assign(point_id="f" * 16)]).to_parquet(
        export
    )  # ... and has a 3rd point
    assert RunStore.open(store.path).rows() == before
    export.write_bytes(export.read_bytes()[:25])  # truncated: not Parquet any more
    again = RunStore.open(store.path)
    assert again.rows() == before and len(again.points()) == 2
    assert again.finished_point_ids() == {make_row(1).point_id, make_row(2).point_id}
    assert load_side(store.path).entries == entries  # compare reads the rows too
    again.add_point(make_row(3))
    again.finalize()  # rewritten from the rows, whatever the old export held
    assert sorted(pd.read_parquet(export)["throughput_tok_per_s"]) == [101.0, 102.0, 103.0]
    export.unlink()
    assert len(RunStore.open(store.path).rows()) == 3


_BAD_METRIC = {**make_row(2).to_record(), "metrics": {"throughput": 1.0}}
_NAN_METRIC = json.dumps(make_row(2).to_record()).replace("102.0", "NaN")


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b'{"point_id": "', "Unterminated string"),
        (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "can't decode byte 0x89"),
        (b"", "Expecting value"),
        (b"[1, 2]", "must be a JSON object, got list"),
        (json.dumps(_BAD_METRIC).encode(), "unknown metric 'throughput' in metrics"),
        (_NAN_METRIC.encode(), "metrics.throughput_tok_per_s must be a finite number, got nan"),
        (json.dumps({**_BAD_METRIC, "metrics": {}, "schema": 3}).encode(), "schema 3"),
        (json.dumps({**_BAD_METRIC, "metrics": None}).encode(), "metrics must be a mapping, got None"),
    ],
)
def test_a_corrupt_point_file_is_a_one_line_error_naming_it(tmp_path, capsys, content, why):
    store = new_store(tmp_path)
    store.add_point(make_row(1))
    bad = store.path / "points" / f"{make_row(2).point_id}.json"
    bad.write_bytes(content)
    for read in (store.rows, store.points, store.finished_point_ids, store.finalize):
        with pytest.raises(UserInputError) as info:
            read()
        message = str(info.value)
        assert message.startswith(f"{bad}: not a valid point row (") and "\n" not in message
        assert why in message, message
    code = main(["compare", str(store.path), str(store.path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(bad) in err


def test_a_point_file_under_another_id_is_an_error(tmp_path):
    store = new_store(tmp_path)
    row = store.add_point(make_row(1))
    folder = store.path / "points"
    other = folder / f"{make_row(2).point_id}.json"
    (folder / f"{row.point_id}.json").rename(other)
    with pytest.raises(UserInputError) as info:
        store.rows()
    assert str(info.value) == f"{other}: holds point {row.point_id}, not {make_row(2).point_id}"
    atomic_write_bytes(folder / f"{row.point_id}.json", other.read_bytes())  # a copy under both names
    with pytest.raises(UserInputError, match="holds point"):
        store.finished_point_ids()
    other.unlink()
    assert store.rows() == [row]


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
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "manifest.json").write_text('{"run_id": "bare"}')
    with pytest.raises(UserInputError, match="has no points/ folder"):
        RunStore.open(tmp_path / "bare").rows()


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

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"new, longer content")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["f.json"]


def _run_child(script: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, stderr=subprocess.PIPE)


def test_crash_between_temp_write_and_replace(tmp_path):
    """A process that dies right before os.replace leaves the old point and a temp file readers skip."""
    child = _run_child(f"""
        import os

        from tests.lamina_bench.test_results import make_row, new_store
        from pathlib import Path
        store = new_store(Path({str(tmp_path)!r}))
        store.add_point(make_row(1))
        os.replace = lambda src, dst: os._exit(9)   # die with the new temp file written
        store.add_point(make_row(1, tbt_p50_ms=999.0), replace=True)
    """)
    assert child.wait(timeout=60) == 9, child.stderr.read().decode()
    folder = tmp_path / "run-a" / "points"
    assert any(name.endswith(".tmp") for name in os.listdir(folder))  # the crash left its temp file
    store = RunStore.open(tmp_path / "run-a")
    (row,) = store.rows()
    assert row.value("tbt_p50_ms") == 10.0  # the old, whole point
    assert store.finished_point_ids() == {make_row(1).point_id}


def test_sigkill_while_adding_points_leaves_whole_points(tmp_path):
    child = _run_child(f"""
        from pathlib import Path
        from lamina_bench.results.telemetry import TelemetrySample
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
    rows = store.rows()  # every stored point parses and validates
    n = len(rows)
    assert n >= 30
    assert sorted(r.batch_size for r in rows) == list(range(1, n + 1))  # no hole, no partial point
    assert all(r == make_row(r.batch_size).replace(run_id="run-a", timestamp=r.timestamp) for r in rows)
    assert store.finished_point_ids() == {make_row(i).point_id for i in range(1, n + 1)}
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

    union = {r.point_id: r for s in (shard1, shard0) for r in s.rows()}  # shard0's point 5 wins
    rows = RunStore.open(merged.path).rows()
    assert {r.point_id: r for r in rows} == union  # whole rows, provenance (run_id) kept
    assert sorted(r.batch_size for r in rows) == [1, 2, 3, 4, 5]
    assert {r.run_id for r in rows} == {"shard0", "shard1"}
    frame = pd.read_parquet(merged.path / "points.parquet")
    assert sorted(frame["point_id"]) == sorted(union) and set(frame["run_id"]) == {"shard0", "shard1"}
    assert sorted(merged.telemetry()["power_w"]) == [1.0, 2.0]
    manifest = json.loads((merged.path / "manifest.json").read_text())
    assert [m["run_id"] for m in manifest["merged_from"]] == ["shard0", "shard1"]
    assert RunStore.open(merged.path).finished_point_ids() == set(union)


def test_merge_conflicting_duplicate_is_an_error(tmp_path):
    shard0, shard1 = new_store(tmp_path, "shard0"), new_store(tmp_path, "shard1")
    shard0.add_point(make_row(1))
    shard1.add_point(make_row(1, throughput_tok_per_s=50.0))
    message = r"point \w{16} differs between .*shard0 and .*shard1 in throughput_tok_per_s$"
    with pytest.raises(UserInputError, match=message):
        merge_runs([shard0.path, shard1.path], tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    shard2 = new_store(tmp_path, "shard2")  # a setting or pool part only one side has is named too
    shard2.add_point(make_row(1, settings={"arrival": "poisson"}, pools={"compute": {"idle_ms": 1.0}}))
    with pytest.raises(UserInputError, match=r"shard2 in settings.arrival, pools.compute.idle_ms$"):
        merge_runs([shard0.path, shard2.path], tmp_path / "merged")
