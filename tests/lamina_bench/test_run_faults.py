"""Faults while `lamina-bench run` works: SIGINT, SIGTERM and SIGKILL before the first point, mid-sweep and
during finalize, then `--resume` (every point exactly once, nothing half-written); two processes on one run
folder; NVML failing mid-run; a row that cannot be stored. (SIGKILL mid-sweep: test_sweep.py.)"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
import types
from pathlib import Path

import pytest

from lamina_bench.cli import main
from lamina_bench.results import store as store_module
from lamina_bench.results.store import RunStore
from lamina_bench.sweep import run as sweep_run
from lamina_bench.sweep.spec import parse_spec
from tests.lamina_bench.test_telemetry import FakeDevice, FakeNVMLError, make_fake_nvml

SPEC = """
name = "faults"
[[modeled]]
models = ["llama-33b"]
traces = ["azure-conv", "azure-code", "kimi-conv"]
requests = 200
prices = "paper-2025"
homogeneous = ["2xH100"]
lamina = [{ compute = "1xH100", attention = "2xH20", pipeline_batches = 2 }]
"""
POINT_IDS = {p.point_id for p in parse_spec(tomllib.loads(SPEC)).points}  # 6 points

# Runs `lamina-bench run` with one moment held open: FAULT=point:K blocks before the K-th point (0: the
# first), FAULT=finalize blocks after points.parquet is exported and before the manifest is closed. The
# marker file appears when the moment is reached, so the test signals exactly then.
DRIVER = """
import os, pathlib, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, whatever the parent ignores
import lamina_bench.results.store as store_mod
import lamina_bench.sweep.run as sweep_run
from lamina_bench.cli import main

marker, fault = pathlib.Path(os.environ["MARKER"]), os.environ["FAULT"]

def hold():
    marker.write_text(str(os.getpid()))
    time.sleep(300)

if fault.startswith("point:"):
    stop, calls, real_execute = int(fault.split(":")[1]), [0], sweep_run.execute
    def execute(point, ctx, repeats):
        if calls[0] == stop:
            hold()
        calls[0] += 1
        return real_execute(point, ctx, repeats)
    sweep_run.execute = execute
else:
    real_write = store_mod.atomic_write_parquet
    def write(path, frame):
        real_write(path, frame)
        if pathlib.Path(path).name == "points.parquet":
            hold()
    store_mod.atomic_write_parquet = write
sys.exit(main(sys.argv[1:]))
"""


def start(tmp_path: Path, fault: str, *argv) -> subprocess.Popen:
    env = {**os.environ, "MARKER": str(tmp_path / "marker"), "FAULT": fault}
    args = [sys.executable, "-c", DRIVER, "run", str(tmp_path / "spec.toml"), "--no-report", *map(str, argv)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "marker").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the held moment was never reached"
        time.sleep(0.05)
    return proc


def only_run(out: Path) -> Path:
    (run,) = [p for p in out.iterdir() if (p / "manifest.json").is_file()]
    return run


def resume_and_check(out: Path, stored_before: set[str], capsys, command: str | None = None) -> Path:
    """Resume in-process (with `command`, the one the interrupted run printed, if given); every point ends
    up stored exactly once and the run folder is whole."""
    run = only_run(out)
    argv = ["run", str(out.parent / "spec.toml"), "--out", str(out), "--resume"]
    if command is not None:
        assert shlex.split(command)[0] == "lamina-bench"
        argv = shlex.split(command)[1:]
    assert main([*argv, "--no-report"]) == 0
    printed = capsys.readouterr()
    assert f"resuming {run}" in printed.err
    todo = len(POINT_IDS) - len(stored_before)
    assert f"{todo} points run, {len(stored_before)} already done" in printed.out
    files = sorted(p.name for p in (run / "points").iterdir())
    assert files == sorted(f"{pid}.json" for pid in POINT_IDS)  # once each, no temporaries
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    assert json.loads((run / "manifest.json").read_text())["status"] == "finished"
    store = RunStore.open(run)
    assert {r.point_id for r in store.rows()} == POINT_IDS and all(r.ok for r in store.rows())
    assert set(store.points()["point_id"]) == POINT_IDS
    return run


def check_interrupted(out: Path, stored: set[str], err: str) -> str:
    """The one line an interrupted run ends with; returns the resume command it prints."""
    run = only_run(out)
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"lamina-bench: interrupted: {len(stored)} points are stored in {re.escape(str(run))} "
        rf"\(each whole\); continue with: lamina-bench run {re.escape(str(out.parent / 'spec.toml'))} "
        rf"--out {re.escape(str(out))} --resume --run-id {run.name}",
        last,
    ), last
    assert "Traceback" not in err, err
    assert json.loads((run / "manifest.json").read_text())["status"] == "interrupted"
    return last.split("continue with: ")[1]


@pytest.mark.parametrize(
    "sig, fault",
    [
        (signal.SIGINT, "point:3"),  # mid-sweep
        (signal.SIGTERM, "point:3"),
        (signal.SIGKILL, "point:0"),  # before the first point
        (signal.SIGKILL, "finalize"),
    ],
    ids=["sigint-mid", "sigterm-mid", "sigkill-first", "sigkill-finalize"],
)
def test_signal_then_resume_runs_every_point_exactly_once(tmp_path, capsys, sig, fault):
    (tmp_path / "spec.toml").write_text(SPEC)
    out = tmp_path / "out"
    proc = start(tmp_path, fault, "--out", out)
    sent = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 15, "the run must stop promptly"
    stored = {p.stem for p in (only_run(out) / "points").glob("*.json")}
    assert len(stored) == {"point:0": 0, "point:3": 3, "finalize": 6}[fault]
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
        resume_and_check(out, stored, capsys)
    else:
        assert proc.returncode == 130
        resume_and_check(out, stored, capsys, command=check_interrupted(out, stored, err))


@pytest.fixture
def ctrl_c():
    """SIGINT raises KeyboardInterrupt, as in a terminal, even if an earlier test left it ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("fault", ["point:0", "finalize"], ids=["sigint-first", "sigint-finalize"])
def test_ctrl_c_before_the_first_point_and_during_finalize(tmp_path, capsys, monkeypatch, ctrl_c, fault):
    """The same moments in-process: Ctrl-C raised in the main thread exactly there."""
    (tmp_path / "spec.toml").write_text(SPEC)
    out = tmp_path / "out"
    if fault == "point:0":
        monkeypatch.setattr(sweep_run, "execute", lambda *a: signal.raise_signal(signal.SIGINT))
    else:
        real_write = store_module.atomic_write_parquet

        def write(path, frame):
            real_write(path, frame)
            if Path(path).name == "points.parquet":
                signal.raise_signal(signal.SIGINT)

        monkeypatch.setattr(store_module, "atomic_write_parquet", write)
    assert main(["run", str(tmp_path / "spec.toml"), "--out", str(out), "--no-report"]) == 130
    stored = {p.stem for p in (only_run(out) / "points").glob("*.json")}
    assert len(stored) == (0 if fault == "point:0" else 6)
    command = check_interrupted(out, stored, capsys.readouterr().err)
    monkeypatch.undo()
    resume_and_check(out, stored, capsys, command=command)


def test_two_processes_never_write_one_run_folder(tmp_path, capsys):
    (tmp_path / "spec.toml").write_text(SPEC)
    out, spec = tmp_path / "out", str(tmp_path / "spec.toml")
    writer = start(tmp_path, "point:2", "--out", out, "--run-id", "shared")
    try:
        assert main(["run", spec, "--out", str(out), "--run-id", "shared", "--no-report"]) == 2
        assert "run folder" in capsys.readouterr().err
        assert main(["run", spec, "--out", str(out), "--resume", "--no-report"]) == 2  # resuming it at once
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert f"is being written by another lamina-bench process (pid {writer.pid})" in err
        assert len(list((out / "shared" / "points").glob("*.json"))) == 2  # the second process wrote nothing
    finally:
        writer.kill()
        writer.communicate()
    resume_and_check(out, {p.stem for p in (out / "shared" / "points").glob("*.json")}, capsys)  # lock gone


# ---- in-process faults -----------------------------------------------------------------------------------

MEASURED = """
name = "nvml"
[[measured]]
model = "bench-llama-gqa"
systems = ["homogeneous"]
batch_sizes = [1, 2]
new_tokens = 4
predict = false
"""


@pytest.mark.parametrize(
    "failure, verdict",
    [
        (RuntimeError("driver went away"), "sampling failed: RuntimeError: driver went away"),
        (FakeNVMLError(999), "device 0 disappeared"),
    ],
    ids=["not-an-nvml-error", "nvml-unknown-error"],
)
def test_nvml_failing_mid_run_keeps_the_points_and_says_why(tmp_path, monkeypatch, failure, verdict):
    device = FakeDevice()
    nvml = make_fake_nvml([device])
    broken = {"now": False}
    power = nvml.nvmlDeviceGetPowerUsage

    def failing_power(handle):
        if broken["now"]:
            raise failure
        return power(handle)

    nvml.nvmlDeviceGetPowerUsage = failing_power
    monkeypatch.setitem(sys.modules, "pynvml", nvml)

    def measured(config):  # stands in for the reference implementation; NVML breaks while it runs
        broken["now"] = True
        return types.SimpleNamespace(metrics=lambda: {"throughput_tok_per_s": 100.0}, breakdown_ms=None)

    monkeypatch.setattr(
        "lamina_bench.measure.run.run_measured", measured
    )  # sweep/run.py imports it per point
    spec = parse_spec(tomllib.loads(MEASURED))
    store = RunStore.create(tmp_path, "nvml", devices=[])
    outcome = sweep_run.run_sweep(
        spec, store, list(spec.points), progress=sweep_run.Progress(2, io.StringIO())
    )
    rows = store.rows()
    assert outcome.failed == 0 and len(rows) == 2 and all(r.ok for r in rows)  # the run went on
    assert all(r.value("throughput_tok_per_s") == 100.0 for r in rows)
    assert all(verdict in r.telemetry_verdict for r in rows), [r.telemetry_verdict for r in rows]


def test_a_row_that_cannot_be_stored_becomes_a_failed_row(tmp_path, monkeypatch):
    spec = parse_spec(tomllib.loads(SPEC))
    points = list(spec.points)[:2]
    real = sweep_run.execute

    def execute(point, ctx, repeats):
        row = real(point, ctx, repeats)
        return row.replace(settings={**row.settings, "odd": math.nan}) if point is points[0] else row

    monkeypatch.setattr(sweep_run, "execute", execute)
    store = RunStore.create(tmp_path, "unstorable", devices=[])
    outcome = sweep_run.run_sweep(spec, store, points, progress=sweep_run.Progress(2, io.StringIO()))
    rows = {r.point_id: r for r in store.rows()}
    assert outcome.failed == 1 and set(rows) == {p.point_id for p in points}  # no silent gap
    first = rows[points[0].point_id]
    assert first.status == "failed" and "ValueError" in first.error and "JSON" in first.error
    assert rows[points[1].point_id].ok
