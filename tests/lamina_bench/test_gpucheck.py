"""GPU check script: hand-worked byte/FLOP counts, the step runner's failure isolation and time box, and
one end-to-end CPU run of `python -m lamina_bench.gpucheck` (with a failure injected and plotly blocked,
as on the GPU machine)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from lamina_bench import gpucheck
from lamina_bench.errors import UserInputError
from lamina_bench.gpucheck import (
    CheckContext,
    CheckSettings,
    Quantity,
    StepOutcome,
    StepResult,
    StepSkipped,
    check_out_dir,
    copy_bytes_moved,
    decode_kv_bytes,
    gbps,
    gemm_flops,
    gpu_test_files,
    junit_counts,
    plan_for,
    run_step,
    step_box_s,
)

REPO = Path(__file__).resolve().parents[2]


def test_byte_and_flop_counts_worked_by_hand():
    assert copy_bytes_moved(2_000_000_000) == 4_000_000_000  # read 2 GB + write 2 GB
    assert gemm_flops(8192) == 1_099_511_627_776  # 2 * 8192^3 = 2 * 549,755,813,888
    # Llama-3-70B, one layer, fp16: 2 (K, V) * 8 kv heads * 128 * 2 B = 4096 B per token
    assert decode_kv_bytes(1, 1024, 8, 128, 2) == 4_194_304
    assert decode_kv_bytes(32, 8192, 8, 128, 2) == 32 * 8192 * 4096 == 1_073_741_824
    assert gbps(4e9, 1e-3) == pytest.approx(4000.0)  # 4 GB in 1 ms: decimal GB
    # the full plan's decode points all read >= 1 GB of KV, far beyond a 60 MB L2
    for batch, context in plan_for("cuda", quick=False).decode_points:
        assert decode_kv_bytes(batch, context, 8, 128, 2) >= 1e9


def test_step_box_shares_the_remaining_budget_and_rolls_time_forward():
    weights = {"a": 1.0, "b": 1.0, "c": 2.0}
    assert step_box_s(100.0, weights, "a", ["b", "c"]) == pytest.approx(25.0)
    # a used 10 s of its 25: b gets a third of the 90 left, c the rest
    assert step_box_s(90.0, weights, "b", ["c"]) == pytest.approx(30.0)
    assert step_box_s(60.0, weights, "c", []) == pytest.approx(60.0)
    assert step_box_s(-5.0, weights, "c", []) == 0.0


def _ctx(tmp_path: Path) -> CheckContext:
    return CheckContext(tmp_path, tmp_path, plan_for("cpu", quick=True), log=lambda _m: None)


def test_run_step_turns_every_outcome_into_a_result(tmp_path):
    ctx = _ctx(tmp_path)

    def boom(_ctx):
        raise ValueError("bad\nthing")

    def skip(_ctx):
        raise StepSkipped("not here")

    def check_fails(_ctx):
        return StepOutcome({"x_ms": Quantity(1.5, "ms", "measured")}, failure="off by 2x")

    def fine(_ctx):
        return StepOutcome({"x_gbps": Quantity(3.0, "GB/s", "derived")}, {"n": 1}, ("f.json",))

    r = run_step("s", boom, ctx, 5.0)
    assert (r.status, r.error) == ("failed", "ValueError: bad thing")  # one line
    r = run_step("s", skip, ctx, 5.0)
    assert (r.status, r.reason, r.error) == ("skipped", "not here", None)
    r = run_step("s", check_fails, ctx, 5.0)
    assert (r.status, r.error, r.numbers["x_ms"].value) == ("failed", "off by 2x", 1.5)  # numbers kept
    r = run_step("s", fine, ctx, 5.0)
    assert (r.status, r.files, r.as_dict()["numbers"]["x_gbps"]["source"]) == ("ok", ("f.json",), "derived")
    r = run_step("s", fine, ctx, 5.0, fail=True)
    assert r.status == "failed" and "injected" in r.error


def test_run_step_stops_a_step_at_its_time_box(tmp_path):
    ctx = _ctx(tmp_path)
    start = time.monotonic()
    r = run_step("slow", lambda _c: time.sleep(10), ctx, 0.3)
    assert r.status == "failed" and "timed out" in r.error
    assert time.monotonic() - start < 3.0
    # the alarm is disarmed afterwards: a later step is not interrupted
    assert run_step("next", lambda _c: (time.sleep(0.5), StepOutcome())[1], ctx, 5.0).status == "ok"


def test_results_validate_their_fields():
    with pytest.raises(ValueError, match="source"):
        Quantity(1.0, "ms", "modeled")
    with pytest.raises(ValueError, match="finite"):
        Quantity(math.nan, "ms", "measured")
    with pytest.raises(ValueError, match="error must be set"):
        StepResult("s", "failed", 1.0, 2.0)
    with pytest.raises(ValueError, match="status"):
        StepResult("s", "done", 1.0, 2.0)
    with pytest.raises(UserInputError, match="budget"):
        CheckSettings(Path("out"), budget_s=0)
    with pytest.raises(ValueError, match="unknown step 'gemmm'; valid: pytest_gpu"):
        CheckSettings(Path("out"), fail_steps=("gemmm",))


def test_gpu_test_files_and_junit_counts(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "test_a.py").write_text("import pytest\n@pytest.mark.gpu\ndef test_x(): pass\n")
    (tmp_path / "test_b.py").write_text("import plotly\ndef test_y(): pass\n")
    assert gpu_test_files(tmp_path) == [tmp_path / "sub" / "test_a.py"]
    xml = tmp_path / "j.xml"
    xml.write_text(
        '<testsuites><testsuite name="a" tests="5" failures="1" errors="0" skipped="2"/>'
        '<testsuite name="b" tests="3" failures="0" errors="1" skipped="0"/></testsuites>'
    )
    assert junit_counts(xml) == {"tests": 8, "failures": 1, "errors": 1, "skipped": 2}


def test_check_out_dir_names_what_the_device_tool_would_drop(tmp_path):
    for i in range(8):
        (tmp_path / f"f{i}.txt").write_text("x")
    assert check_out_dir(tmp_path) == []
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "g.txt").write_text("x")
    problems = check_out_dir(tmp_path)
    assert any("9 files" in p for p in problems) and any("2 folders deep" in p for p in problems)


def test_cli_registers_gpu_check():
    from lamina_bench.cli import build_parser

    args = build_parser().parse_args(["gpu-check", "out", "--quick", "--budget-s", "60"])
    assert (args.out_dir, args.quick, args.budget_s) == ("out", True, 60.0)
    assert args.func.__name__ == "_run_gpu_check"


def test_script_runs_on_cpu_end_to_end_with_a_failed_step(tmp_path):
    """The script as the GPU machine runs it: no plotly (a blocker package), the gemm step made to raise."""
    blocker = tmp_path / "blocker" / "plotly"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('plotly is not on the GPU machine')\n")
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(blocker.parent), str(REPO)]),
        gpucheck.FAIL_ENV: "gemm",
        "LAMINA_BENCH_CACHE": str(tmp_path / "models"),
        "CUDA_VISIBLE_DEVICES": "",  # CPU mode even where a GPU exists
    }
    cmd = [sys.executable, "-m", "lamina_bench.gpucheck", str(out), "--quick", "--budget-s", "150"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]  # 1: a step failed

    summary = json.loads((out / "summary.json").read_text())
    assert summary["format"] == gpucheck.FORMAT and summary["status"] == "failed"
    assert summary["failed_steps"] == ["gemm"]
    assert summary["environment"]["device"] == "cpu" and summary["environment"]["torch"]
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps) == list(gpucheck.STEP_NAMES)  # every step ran after the failure
    assert "injected" in steps["gemm"]["error"]
    assert (
        steps["decode_bandwidth"]["status"] == "skipped"
        and "interpreter" in steps["decode_bandwidth"]["reason"]
    )
    for name in ("pytest_gpu", "copy_bandwidth", "decode_check", "profile", "sweep_point"):
        assert steps[name]["status"] == "ok", (name, steps[name])
    for step in summary["steps"]:
        assert step["wall_s"] >= 0 and step["time_box_s"] > 0
        for number in step["numbers"].values():
            assert number["source"] in ("measured", "derived") and number["unit"] and number["value"] > 0
    assert steps["copy_bandwidth"]["numbers"]["copy_gbps"]["unit"] == "GB/s"
    assert steps["decode_check"]["numbers"]["decode_rel_err"]["value"] < 1e-2
    assert steps["pytest_gpu"]["details"]["exit_code"] == 0 and steps["pytest_gpu"]["details"]["tests"] > 0

    names = sorted(p.name for p in out.iterdir())
    assert len(names) <= gpucheck.MAX_OUT_FILES and check_out_dir(out) == []
    assert {"summary.json", "log.txt", "pytest-junit.xml", "run.tar.gz", "cpu-cpu.json"} <= set(names)
    from lamina_bench.model.profiles import load_profile

    profile = load_profile(out / "cpu-cpu.json")
    assert profile.device == "cpu" and len(profile.attention) == 4
    with tarfile.open(out / "run.tar.gz") as tar:
        members = {Path(m).name for m in tar.getnames()}
    assert {"manifest.json", "points.parquet"} <= members
    log = (out / "log.txt").read_text()
    assert all(f"step {name}" in log for name in gpucheck.STEP_NAMES) and "summary:" in log
