"""Sweeps end to end: spec validation, stable point ids, the rows points start from, resume after SIGKILL,
shards, measured points with predictions."""

import dataclasses
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from lamina_bench.errors import UserInputError
from lamina_bench.results.files import atomic_write_json
from lamina_bench.results.row import PointRow, point_id
from lamina_bench.results.store import RunStore
from lamina_bench.sweep.points import Point
from lamina_bench.sweep.resume import find_resumable, manifest_spec, parse_shard, shard
from lamina_bench.sweep.run import Progress, _Context, execute, repro_command
from lamina_bench.sweep.spec import parse_spec

MODELED = """
name = "t"
[[modeled]]
models = ["llama-33b", "llama-65b"]
traces = ["azure-conv", "azure-code", "kimi-conv"]
requests = 1500
prices = "paper-2025"
homogeneous = ["4xH100"]
lamina = [{ compute = "2xH100", attention = "4xH20", pipeline_batches = 2 }]
"""


def _cli(*args, env=None, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "lamina_bench.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        **kwargs,
    )


def _run(*args, env=None) -> subprocess.CompletedProcess:
    proc = _cli(*args, env=env)
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


MEASURED = """
name = "m"
repeats = 1
[[measured]]
model = "bench-llama-gqa"
systems = ["homogeneous", "lamina"]
batch_sizes = [2]
context_lens = [16]
new_tokens = 4
pipeline_batches = [2]
"""


def _spec(tmp_path, text=MODELED, name="spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _only_run(root: Path) -> Path:
    runs = [p for p in root.iterdir() if (p / "manifest.json").is_file()]
    assert len(runs) == 1, runs
    return runs[0]


def test_spec_expands_to_unique_stable_points():
    spec = parse_spec(tomllib.loads(MODELED))
    assert len(spec.points) == 2 * 3 * 2
    assert len({p.point_id for p in spec.points}) == len(spec.points)
    again = parse_spec(tomllib.loads(MODELED))
    assert [p.point_id for p in again.points] == [p.point_id for p in spec.points]


def test_point_ids_are_pinned():
    """Measured and prediction ids are those of the version before typed points (lamina_bench/sweep.py);
    modeled ids also hash the price set since prices come from named sets. Pinned: resume, shards and
    compare against older runs and the committed baselines match points by these ids."""
    spec = parse_spec(tomllib.loads(MEASURED + MODELED.replace('name = "t"', "")))
    assert [(p.kind, p.point_id) for p in spec.points] == [
        ("measured", "d8fedd8e6b276a06"),
        ("prediction", "f0d91cb8b522700a"),
        ("measured", "23d7a2905756a6d4"),
        ("prediction", "9f0c247b357ca38b"),
        ("modeled", "b4d3cb622a5872ad"),
        ("modeled", "1823f777a34cb8ca"),
        ("modeled", "465f6ab0a71bbcaa"),
        ("modeled", "35bd6f7408543222"),
        ("modeled", "59ae40920ba0df73"),
        ("modeled", "e9292a5e49cb56fd"),
        ("modeled", "83723f58da079cd7"),
        ("modeled", "02d9ed1ac4281fb4"),
        ("modeled", "dfcfe9646eadbd4d"),
        ("modeled", "ae58bb06e79e514b"),
        ("modeled", "c74cdc11210046ba"),
        ("modeled", "e87dc444062c5c35"),
    ]
    assert all(p.point_id == point_id(p.identity()) for p in spec.points)
    capped = parse_spec(
        tomllib.loads(MODELED.replace("requests = 1500", "requests = 1500\nbatch_caps = [0, 8]"))
    )
    ids = {(p.config.max_batch, p.point_id) for p in capped.points}
    assert {pid for cap, pid in ids if cap == 0} == {p.point_id for p in spec.points if p.kind == "modeled"}
    assert all("max_batch" in p.identity() for p in capped.points if p.config.max_batch)


def test_points_rows_and_repro_commands():
    measured, prediction = parse_spec(tomllib.loads(MEASURED)).points[:2]
    modeled = parse_spec(tomllib.loads(MODELED)).points[1]
    assert (measured.kind, prediction.kind, modeled.kind) == ("measured", "prediction", "modeled")
    assert prediction.config == measured.config and prediction.predicts == measured.point_id
    assert measured.predicts is None and modeled.predicts is None
    assert prediction.identity() == {**measured.identity(), "mode": "modeled", "predicts": "measured"}
    assert (measured.source, prediction.source, modeled.source) == ("measured", "modeled", "modeled")
    assert prediction.row("cmd") == PointRow(
        point_id=prediction.point_id,
        source="modeled",
        model="bench-llama-gqa",
        system="homogeneous",
        compute="1xcpu",
        batch_size=2,
        context_len=16,
        pipeline_batches=1,
        dtype="fp32",
        settings={"device": "cpu", "new_tokens": 4, "tp": 1},
        predicts=measured.point_id,
        repro_command="cmd",
    )
    row = modeled.row("cmd")
    assert (row.attention, row.trace, row.requests, row.settings) == (
        "4xH20",
        "azure-conv",
        1500,
        {"arrival": "saturate", "rate_per_s": 0.0, "prices": "paper-2025"},
    )
    assert row.metrics == {} and row.ok
    assert repro_command(measured, "s.toml") == f"lamina-bench run s.toml --point {measured.point_id}"
    assert repro_command(modeled, "s.toml") == (
        "lamina-bench simulate --model llama-33b --system lamina --compute 2xH100 --trace azure-conv "
        "--arrival saturate --dtype fp16 --prices paper-2025 --attention 4xH20 --pipeline-batches 2 --requests 1500"
    )
    with pytest.raises(ValueError, match="point kind must be one of measured, prediction, modeled"):
        Point("simulated", modeled.config)
    with pytest.raises(ValueError, match="a modeled point takes a ModeledConfig"):
        Point("modeled", measured.config)
    with pytest.raises(ValueError, match="a measured point takes a MeasuredConfig"):
        Point("measured", modeled.config)


def test_execute_a_modeled_point_and_a_failing_one():
    point = parse_spec(tomllib.loads(MODELED)).points[1]  # llama-33b, Lamina 2xH100 + 4xH20, azure-conv
    ctx = _Context(store=None, spec_path="s.toml", sampler=None)  # a modeled point needs neither
    row = execute(point, ctx, repeats=1)
    assert row.ok and row.source == "modeled" and row.profile.startswith("opmodel-")
    assert row.config() == point.row("x").config() and row.repro_command == repro_command(point, "s.toml")
    assert row.value("throughput_tok_per_s") > 0 and row.value("cost_usd_per_hour") == 2 * 11.06 + 4 * 4.63
    assert set(row.pools) == {"compute", "attention"} and row.value("network_ms") > 0
    assert row.throughput_basis == "saturated phase" and row.whole_trace["throughput_tok_per_s"] > 0
    assert row.rejected_requests == 0 and PointRow.from_record(row.to_record()) == row
    bad = Point("modeled", dataclasses.replace(point.config, trace="no-such-trace"))
    failed = execute(bad, ctx, repeats=1)  # a failed row, not an exception
    assert not failed.ok and failed.point_id == bad.point_id and failed.metrics == {}
    assert "no-such-trace" in failed.error and "\n" not in failed.error


def test_progress_lines():
    out = io.StringIO()
    progress = Progress(12, out)
    progress.update("modeled:a", "ok", 1.34)
    progress.update("modeled:b", "FAILED: boom", 0.5)
    first, second = out.getvalue().splitlines()
    assert re.fullmatch(r"\[ 1/12\]   8% ETA \d+:\d\d  modeled:a  ok \(1\.3 s\)", first), first
    assert re.fullmatch(r"\[ 2/12\]  17% ETA \d+:\d\d  modeled:b  FAILED: boom \(0\.5 s\)", second), second


def test_resume_finds_the_newest_unfinished_run_of_the_same_spec(tmp_path):
    spec = parse_spec(tomllib.loads(MODELED))
    record = manifest_spec(spec, "spec.toml", "1/2")
    assert record == {"path": "spec.toml", "shard": "1/2", "point": None, "repeats": 1, "toml": spec.raw}
    for run_id, start, status, shard_text in (
        ("old", "2026-01-01", "running", "1/2"),
        ("new", "2026-02-01", "running", "1/2"),
        ("done", "2026-03-01", "finished", "1/2"),
        ("other", "2026-04-01", "running", "2/2"),
    ):
        store = RunStore.create(
            tmp_path, run_id, manifest_spec(spec, "spec.toml", shard_text), ["t"], devices=[]
        )
        atomic_write_json(
            store.path / "manifest.json", {**store.manifest, "start_time": start, "status": status}
        )
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{")  # skipped, not an error
    assert find_resumable(tmp_path, record) == tmp_path / "new"
    assert find_resumable(tmp_path, manifest_spec(spec, "spec.toml", None)) is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("name = 'x'\n[[modeled]]\nmodel = ['llama-33b']\n", "unknown key 'model'"),
        (
            "[[modeled]]\nmodels = ['llama-99b']\nhomogeneous = ['2xH100']\nsystems = ['homogeneous']\n",
            "llama-99b",
        ),
        (
            "[[modeled]]\nmodels = ['llama-65b']\nhomogeneous = ['1xH100']\nsystems = ['homogeneous']\n",
            "does not fit",
        ),
        (
            "[[modeled]]\nmodels = ['llama-33b']\nhomogeneous = ['2xH101']\nsystems = ['homogeneous']\n",
            "H101",
        ),
        ("[[measured]]\nmodel = 'bench-llama-gqa'\nbatch_sizes = [0]\n", "positive integers"),
        ("repeats = 0\n[[modeled]]\nmodels = ['llama-33b']\n", "repeats"),
        (
            "[[measured]]\nmodel = 'bench-llama-gqa'\nsystems = ['lamina']\npipeline_batches = [3]\n",
            "multiple of 2",
        ),
    ],
)
def test_bad_specs_fail_before_any_work_with_one_line_and_exit_2(tmp_path, text, message):
    proc = _run("run", _spec(tmp_path, text), "--out", tmp_path / "out", "--no-report")
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing written


def test_sigkill_then_resume_runs_every_point_exactly_once(tmp_path):
    spec, out = _spec(tmp_path), tmp_path / "out"
    proc = _cli("run", spec, "--out", out, "--no-report")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        points = list(out.glob("*/points/*.json"))
        if len(points) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = _only_run(out)
    done_before = {p.stem for p in (run_dir / "points").glob("*.json")}
    assert 3 <= len(done_before) < 12, "the kill must land half-way"
    resumed = _run("run", spec, "--out", out, "--no-report", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run_dir}" in resumed.stderr
    assert f"{12 - len(done_before)} points run, {len(done_before)} already done" in resumed.stdout
    rows = RunStore.open(run_dir).rows()
    expected = {p.point_id for p in parse_spec(tomllib.loads(MODELED)).points}
    assert len(rows) == 12 and {r.point_id for r in rows} == expected and all(r.ok for r in rows)
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "finished"


def test_two_shards_merged_equal_the_unsharded_sweep(tmp_path):
    spec = _spec(tmp_path)
    assert _run("run", spec, "--out", tmp_path / "all", "--no-report").returncode == 0
    for i in (1, 2):
        assert (
            _run("run", spec, "--out", tmp_path / f"s{i}", "--no-report", "--shard", f"{i}/2").returncode == 0
        )
    merged = _run(
        "merge", _only_run(tmp_path / "s1"), _only_run(tmp_path / "s2"), "--out", tmp_path / "merged"
    )
    assert merged.returncode == 0, merged.stderr
    volatile = dict(run_id=None, timestamp=None, wall_s=None)
    whole = {r.point_id: r.replace(**volatile) for r in RunStore.open(_only_run(tmp_path / "all")).rows()}
    joined = {r.point_id: r.replace(**volatile) for r in RunStore.open(tmp_path / "merged").rows()}
    assert len(whole) == 12 and joined == whole  # every field of every row, metrics included


def test_shard_arguments():
    assert parse_shard("2/3") == (2, 3)
    assert shard(list(range(7)), 1, 3) == [0, 3, 6]
    for bad in ("0/2", "3/2", "x", "1/0"):
        with pytest.raises(UserInputError, match="--shard"):
            parse_shard(bad)


@pytest.mark.slow  # ~30 s, most of it the full CPU profile; the in-process test below runs a small one
def test_measured_points_with_predictions_and_lamina_breakdown(tmp_path):
    spec = _spec(tmp_path, MEASURED)
    proc = _run(
        "run", spec, "--out", tmp_path / "out", "--no-report", env={"LAMINA_BENCH_CACHE": str(tmp_path)}
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    _check_measured_and_predicted(RunStore.open(_only_run(tmp_path / "out")).rows())


def test_measured_points_with_predictions_in_process(tmp_path, monkeypatch):
    """The same sweep run in this process, its local profile taken on a small grid without the whole-step
    measurements (the link is kept: the Lamina prediction needs it)."""
    import lamina_bench.measure.profile as profile
    import lamina_bench.sweep.run as sweep_run

    full = profile.profile_device
    small = dict(batches=(1, 2), contexts=(16, 64), repeats=1, warmup=0, lamina=False, overhead=False)
    monkeypatch.setattr(profile, "profile_device", lambda s, *a: full(dataclasses.replace(s, **small), *a))
    monkeypatch.setenv("LAMINA_BENCH_CACHE", str(tmp_path))
    spec = parse_spec(tomllib.loads(MEASURED))
    store = RunStore.create(tmp_path, "m", devices=[])
    outcome = sweep_run.run_sweep(spec, store, list(spec.points), progress=Progress(4, io.StringIO()))
    assert outcome.failed == 0
    _check_measured_and_predicted(store.rows())


def _check_measured_and_predicted(rows):
    measured = {r.point_id: r for r in rows if r.source == "measured"}
    modeled = [r for r in rows if r.source == "modeled"]
    assert len(measured) == 2 and len(modeled) == 2 and all(r.ok for r in rows)
    assert all(
        r.value("throughput_tok_per_s") > 0 and r.value("mean_batch_size") == 2 for r in measured.values()
    )
    assert all(r.repeats == 1 and r.repeat is None and r.telemetry_verdict for r in measured.values())
    for row in modeled:
        assert row.predicts in measured and measured[row.predicts].system == row.system
        assert row.profile and row.config() == measured[row.predicts].config()
    (lamina,) = [r for r in measured.values() if r.system == "lamina"]
    assert set(lamina.pools) == {"compute", "attention"} and lamina.pools["compute"]["dense_ms"] > 0
    assert lamina.value("net_bytes_per_token") > 0  # measured link payload, all layers
    assert f"--point {lamina.point_id}" in lamina.repro_command
