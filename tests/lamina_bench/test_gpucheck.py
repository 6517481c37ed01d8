"""GPU check (lamina_bench.gpucheck): hand-worked byte/FLOP counts, the options and their errors, the step
runner's failure isolation, time boxes and hard stop, and end-to-end CPU runs of
`python -m lamina_bench.gpucheck` (one with a failure injected and plotly blocked)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from lamina_bench.catalog.models import get_model
from lamina_bench.cli import build_parser
from lamina_bench.cli import main as lamina_bench_main
from lamina_bench.errors import UserInputError
from lamina_bench.gpucheck.pytest_step import gpu_test_files, junit_counts
from lamina_bench.gpucheck.records import (
    CheckContext,
    Quantity,
    StepOutcome,
    StepResult,
    StepSkipped,
    StepTimeout,
)
from lamina_bench.gpucheck.runner import HARD_STOP_EXIT, GpuCheck, run_step
from lamina_bench.gpucheck.settings import DEFAULT_STEP_TIMEOUT_S, FAIL_ENV, CheckSettings
from lamina_bench.gpucheck.sizes import (
    STEP_NAMES,
    STEP_WEIGHTS,
    copy_bytes_moved,
    decode_kv_bytes,
    gbps,
    gemm_flops,
    parse_steps,
    sizes_for,
    step_box_s,
)
from lamina_bench.gpucheck.steps import STEPS
from lamina_bench.gpucheck.summary import FORMAT

REPO = Path(__file__).resolve().parents[2]
LLAMA_70B = get_model("llama3-70b")


def test_byte_and_flop_counts_worked_by_hand():
    assert copy_bytes_moved(2_000_000_000) == 4_000_000_000  # read 2 GB + write 2 GB
    assert gemm_flops(8192) == 1_099_511_627_776  # 2 * 8192^3 = 2 * 549,755,813,888
    # Llama-3-70B, one layer, fp16: 2 (K, V) * 8 kv heads * 128 * 2 B = 4096 B per token
    assert (LLAMA_70B.num_kv_heads, LLAMA_70B.head_dim) == (8, 128)
    assert decode_kv_bytes(1, 1024, LLAMA_70B, "fp16") == 4_194_304
    assert decode_kv_bytes(32, 8192, LLAMA_70B, "fp16") == 32 * 8192 * 4096 == 1_073_741_824
    assert decode_kv_bytes(1, 1, LLAMA_70B, "fp32") == 8192
    assert gbps(4e9, 1e-3) == pytest.approx(4000.0)  # 4 GB in 1 ms: decimal GB
    # the full and quick CUDA decode points all read >= 1 GB of KV, far beyond any L2 cache
    for quick in (False, True):
        for batch, context in sizes_for("cuda", quick=quick).decode_points:
            assert decode_kv_bytes(batch, context, LLAMA_70B, "fp16") >= 1e9


def test_step_box_shares_the_remaining_budget_and_rolls_time_forward():
    weights = {"a": 1.0, "b": 1.0, "c": 2.0}
    assert step_box_s(100.0, weights, "a", ["b", "c"]) == pytest.approx(25.0)
    # a used 10 s of its 25: b gets a third of the 90 left, c the rest
    assert step_box_s(90.0, weights, "b", ["c"]) == pytest.approx(30.0)
    assert step_box_s(60.0, weights, "c", []) == pytest.approx(60.0)
    assert step_box_s(-5.0, weights, "c", []) == 0.0


def test_steps_sizes_and_weights_name_the_same_steps():
    assert tuple(STEPS) == STEP_NAMES and set(STEP_WEIGHTS) == set(STEP_NAMES)
    assert sizes_for("cpu", quick=False) == sizes_for("cpu", quick=True)  # CPU sizes are tiny either way
    assert sizes_for("cpu", quick=False).decode_points == ()
    with pytest.raises(ValueError, match="device"):
        sizes_for("tpu", quick=False)


def test_parse_steps_keeps_the_fixed_order_and_names_bad_ones():
    assert parse_steps("gemm,copy_bandwidth") == ("copy_bandwidth", "gemm")
    assert parse_steps(" gemm , gemm,") == ("gemm",)
    assert parse_steps(["sweep_point", "pytest_gpu"]) == ("pytest_gpu", "sweep_point")
    with pytest.raises(UserInputError, match="unknown step 'gemmm' in --steps; valid: pytest_gpu, copy"):
        parse_steps("gemmm")
    with pytest.raises(UserInputError, match="names no step"):
        parse_steps(",")


def _ctx(tmp_path: Path) -> CheckContext:
    return CheckContext(tmp_path, tmp_path, sizes_for("cpu", quick=True), log=lambda _m: None)


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
    assert (r.status, r.files, r.numbers["x_gbps"].source, r.details) == (
        "ok",
        ("f.json",),
        "derived",
        {"n": 1},
    )
    r = run_step("s", fine, ctx, 5.0, fail=True)
    assert r.status == "failed" and "injected" in r.error


def test_run_step_stops_a_step_at_its_time_box(tmp_path):
    ctx = _ctx(tmp_path)
    start = time.monotonic()
    r = run_step("slow", lambda _c: time.sleep(10), ctx, 0.3)
    assert r.status == "failed" and "timed out" in r.error and r.time_box_s == 0.3
    assert time.monotonic() - start < 3.0
    # the alarm is disarmed afterwards: a later step is not interrupted
    assert run_step("next", lambda _c: (time.sleep(0.5), StepOutcome())[1], ctx, 5.0).status == "ok"


def test_records_and_settings_validate_their_fields(tmp_path):
    with pytest.raises(ValueError, match="source"):
        Quantity(1.0, "ms", "modeled")  # a check measures; nothing in it comes from the model
    with pytest.raises(ValueError, match="finite"):
        Quantity(math.nan, "ms", "measured")
    with pytest.raises(ValueError, match="unit"):
        Quantity(1.0, "", "measured")
    with pytest.raises(ValueError, match="error must be set"):
        StepResult("s", "failed", 1.0, 2.0)
    with pytest.raises(ValueError, match="status"):
        StepResult("s", "done", 1.0, 2.0)
    for bad in (0, -5.0, math.nan, math.inf):
        with pytest.raises(UserInputError, match="--budget-s must be a positive number"):
            CheckSettings(tmp_path, budget_s=bad)
    with pytest.raises(UserInputError, match="--step-timeout-s"):
        CheckSettings(tmp_path, step_timeout_s=0)
    with pytest.raises(UserInputError, match="--device"):
        CheckSettings(tmp_path, device="tpu")
    with pytest.raises(UserInputError, match=f"unknown step 'gemmm' in {FAIL_ENV}; valid: pytest_gpu"):
        CheckSettings(tmp_path, fail_steps=("gemmm",))
    settings = CheckSettings(tmp_path)
    assert (settings.budget_s, settings.step_timeout_s, settings.steps) == (
        None,
        DEFAULT_STEP_TIMEOUT_S,
        STEP_NAMES,
    )


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


def test_cli_registers_gpu_check_with_its_options_and_defaults():
    args = build_parser().parse_args(["gpu-check", "out"])
    assert (args.out_dir, args.quick, args.budget_s, args.steps, args.device) == (
        "out",
        False,
        None,
        None,
        None,
    )
    assert args.step_timeout_s == DEFAULT_STEP_TIMEOUT_S and args.func.__name__ == "_run_gpu_check"
    argv = ["gpu-check", "out", "--quick", "--budget-s", "420", "--steps", "gemm,profile", "--device", "cpu"]
    args = build_parser().parse_args(argv)
    assert (args.quick, args.budget_s, args.steps, args.device) == (True, 420.0, "gemm,profile", "cpu")


@pytest.mark.parametrize(
    "options, message",
    [
        (["--steps", "gemm,bogus"], "unknown step 'bogus' in --steps; valid: pytest_gpu"),
        (["--budget-s", "-5"], "--budget-s must be a positive number of seconds, got -5.0"),
        (["--step-timeout-s", "0"], "--step-timeout-s must be a positive number of seconds"),
        (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    ],
)
def test_bad_options_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, options, message):
    out = tmp_path / "out"
    try:
        rc = lamina_bench_main(["gpu-check", str(out), *options])
    except SystemExit as exc:  # argparse's own errors (an invalid choice)
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_module_entry_point_reports_bad_options_on_one_line(tmp_path):
    cmd = [sys.executable, "-m", "lamina_bench.gpucheck", str(tmp_path / "out"), "--steps", "nope"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        "python -m lamina_bench.gpucheck: error: unknown step 'nope' in --steps; valid: "
        + ", ".join(STEP_NAMES)
        + "\n"
    )


def _fake(name: str, value: float = 1.0):
    return lambda _ctx: StepOutcome({f"{name}_ms": Quantity(value, "ms", "measured")})


def test_no_budget_by_default_each_step_boxed_by_its_timeout_summary_after_each(tmp_path):
    out = tmp_path / "out"
    seen = {}

    def second(_ctx):  # summary.json already holds the first step when the second runs
        seen["summary"] = json.loads((out / "summary.json").read_text())
        return StepOutcome()

    settings = CheckSettings(out, device="cpu", steps=("copy_bandwidth", "gemm"), step_timeout_s=7.0)
    summary = GpuCheck(settings, steps={"copy_bandwidth": _fake("copy"), "gemm": second}).run()
    assert [s["name"] for s in seen["summary"]["steps"]] == ["copy_bandwidth"]
    assert seen["summary"]["steps"][0]["numbers"]["copy_ms"] == {
        "value": 1.0,
        "unit": "ms",
        "source": "measured",
    }
    assert summary == json.loads((out / "summary.json").read_text())
    assert (
        summary["format"] == FORMAT and summary["status"] == "ok" and summary["settings"]["budget_s"] is None
    )
    assert [(s["name"], s["status"], s["time_box_s"]) for s in summary["steps"]] == [
        ("copy_bandwidth", "ok", 7.0),
        ("gemm", "ok", 7.0),
    ]


def test_budget_shares_boxes_and_the_hard_stop_ends_a_step_stuck_past_it(tmp_path):
    """A step that outlives its alarm (as one stuck in a C call would) is stopped by the watchdog at the
    latest budget + grace after the start: the step is recorded as failed and summary.json rewritten."""
    out, released, fired = tmp_path / "out", threading.Event(), {}

    def stuck(_ctx):
        try:
            released.wait(20)
        except StepTimeout:  # the alarm cannot stop it
            released.wait(20)
        return StepOutcome()

    def exit_fn(code):  # instead of os._exit: note what the hard stop left, then let the step go
        fired.update(code=code, at_s=time.monotonic() - check.start_s)
        fired["summary"] = json.loads((out / "summary.json").read_text())
        released.set()

    settings = CheckSettings(out, device="cpu", budget_s=3.0, grace_s=1.0, steps=("copy_bandwidth", "gemm"))
    check = GpuCheck(settings, steps={"copy_bandwidth": stuck, "gemm": _fake("gemm")}, exit_fn=exit_fn)
    summary = check.run()
    assert fired["code"] == HARD_STOP_EXIT and 2.4 <= fired["at_s"] <= 3.0 + 1.0
    stopped = fired["summary"]
    assert stopped["status"] == "failed" and "hard stop" in stopped["note"]
    assert stopped["settings"]["budget_s"] == 3.0
    (step,) = stopped["steps"]
    assert (
        step["name"] == "copy_bandwidth" and step["status"] == "failed" and "still running" in step["error"]
    )
    assert step["time_box_s"] == pytest.approx(1.5, abs=0.2)  # 20 / (20 + 20) of the 3 s budget
    # (here the process lives on) the next step finds the budget used up and is not run
    assert summary["steps"][-1]["name"] == "gemm" and "budget was used up" in summary["steps"][-1]["error"]


_STUCK_SCRIPT = """
import sys, time
from pathlib import Path
from lamina_bench.gpucheck.records import StepTimeout
from lamina_bench.gpucheck.runner import GpuCheck
from lamina_bench.gpucheck.settings import CheckSettings

def stuck(_ctx):  # ignores every alarm, like a step stuck inside one C call
    while True:
        try:
            time.sleep(60)
        except StepTimeout:
            pass

settings = CheckSettings(Path(sys.argv[1]), device="cpu", budget_s=2.0, grace_s=0.5, steps=("gemm",))
GpuCheck(settings, print, steps={"gemm": stuck}).run()
sys.exit(0)
"""


def test_hard_stop_exits_the_process_with_code_3_after_budget_and_grace(tmp_path):
    script, out = tmp_path / "stuck.py", tmp_path / "out"
    script.write_text(_STUCK_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(script), str(out)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == HARD_STOP_EXIT, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "hard stop" in summary["note"]
    assert [(s["name"], s["status"]) for s in summary["steps"]] == [("gemm", "failed")]
    assert 2.0 <= summary["wall_s"] <= 2.0 + 0.5 + 0.5 <= time.monotonic() - start + 1.0


def test_gpucheck_loads_light_and_never_imports_plotly_or_the_report():
    code = (
        "import sys; import lamina_bench.gpucheck; assert 'torch' not in sys.modules, 'torch at import'; "
        "import lamina_bench.gpucheck.runner; "
        "bad = [m for m in sys.modules if m.split('.')[0] == 'plotly' or m.startswith('lamina_bench.report')]; "
        "assert not bad, bad"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]


def test_module_runs_chosen_steps_under_a_budget(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lamina_bench.gpucheck", str(out), "--steps", "gemm,copy_bandwidth"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [*cmd, "--budget-s", "60"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    steps = summary["steps"]
    assert [(s["name"], s["status"]) for s in steps] == [("copy_bandwidth", "ok"), ("gemm", "ok")]
    assert summary["settings"]["budget_s"] == 60.0 and summary["settings"]["steps"] == [
        "copy_bandwidth",
        "gemm",
    ]
    assert 20.0 < steps[0]["time_box_s"] <= 30.0  # its half of what was left of 60 s
    assert steps[0]["time_box_s"] < steps[1]["time_box_s"] <= 60.0  # time copy left unused rolls forward
    assert sorted(p.name for p in out.iterdir()) == ["log.txt", "summary.json"]


@pytest.mark.slow  # ~20 s; the steps are tested one by one above
def test_script_runs_on_cpu_end_to_end_with_a_failed_step(tmp_path):
    """The script as a GPU machine without plotly runs it (a blocker package), the gemm step made to raise."""
    blocker = tmp_path / "blocker" / "plotly"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('plotly is not installed here')\n")
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(blocker.parent), str(REPO)]),
        FAIL_ENV: "gemm",
        "LAMINA_BENCH_CACHE": str(tmp_path / "models"),
        "CUDA_VISIBLE_DEVICES": "",  # CPU mode even where a GPU exists
    }
    cmd = [sys.executable, "-m", "lamina_bench.gpucheck", str(out), "--quick"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]  # 1: a step failed

    summary = json.loads((out / "summary.json").read_text())
    assert summary["format"] == FORMAT and summary["status"] == "failed" and summary["note"] is None
    assert summary["failed_steps"] == ["gemm"]
    assert summary["settings"]["budget_s"] is None and summary["settings"]["quick"] is True
    assert summary["environment"]["device"] == "cpu" and summary["environment"]["versions"]["torch"]
    assert summary["sizes"]["device"] == "cpu"
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps) == list(STEP_NAMES)  # every step ran after the failure
    assert "injected" in steps["gemm"]["error"]
    assert (
        steps["decode_bandwidth"]["status"] == "skipped"
        and "interpreter" in steps["decode_bandwidth"]["reason"]
    )
    for name in ("pytest_gpu", "copy_bandwidth", "decode_check", "profile", "sweep_point"):
        assert steps[name]["status"] == "ok", (name, steps[name])
    for step in summary["steps"]:
        assert step["wall_s"] >= 0 and step["time_box_s"] == DEFAULT_STEP_TIMEOUT_S
        for number in step["numbers"].values():
            assert number["source"] in ("measured", "derived") and number["unit"] and number["value"] > 0
    assert steps["copy_bandwidth"]["numbers"]["copy_gbps"]["unit"] == "GB/s"
    assert steps["decode_check"]["numbers"]["decode_rel_err"]["value"] < 1e-2
    assert steps["profile"]["numbers"]["attention_layer_b4_ctx64_kv_gbps"]["source"] == "derived"
    assert steps["sweep_point"]["numbers"]["tbt_p50_ms"]["unit"] == "ms"
    assert steps["pytest_gpu"]["details"]["exit_code"] == 0 and steps["pytest_gpu"]["details"]["tests"] > 0

    names = {p.name for p in out.iterdir()}
    assert {
        "summary.json",
        "log.txt",
        "pytest-junit.xml",
        "pytest-log.txt",
        "run.tar.gz",
        "cpu-cpu.json",
    } <= names
    from lamina_bench.model.profiles import load_profile

    profile = load_profile(out / "cpu-cpu.json")
    assert profile.device == "cpu" and len(profile.attention) == 4
    with tarfile.open(out / "run.tar.gz") as tar:
        members = {Path(m).name for m in tar.getnames()}
    assert {"manifest.json", "points.parquet"} <= members
    log = (out / "log.txt").read_text()
    assert all(f"step {name}" in log for name in STEP_NAMES) and "summary:" in log
