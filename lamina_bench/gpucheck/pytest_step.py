"""Step pytest_gpu: the repository's gpu-marked tests, in a subprocess with a timeout.

Only the test files that use the gpu marker are collected, so a test module that needs a package this
machine lacks (plotly, say) cannot break the step with a collection error. The junit xml and the log go
into the output folder; exit code 5 (nothing collected) counts as a pass. A CPU check hides any GPU
from the tests (they skip what needs one).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from lamina_bench.gpucheck.records import CheckContext, StepOutcome, StepSkipped

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout holding lamina_bench/ and tests/
TIMEOUT_MARGIN_S = 3.0  # the subprocess times out this long before the step's box ends


def gpu_test_files(tests_dir: Path) -> list[Path]:
    """Test files under tests_dir that use the gpu marker."""
    return sorted(p for p in tests_dir.rglob("test_*.py") if "mark.gpu" in p.read_text(encoding="utf-8"))


def junit_counts(path: Path) -> dict[str, int]:
    """tests / failures / errors / skipped summed over the junit xml's test suites."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    keys = ("tests", "failures", "errors", "skipped")
    return {k: sum(int(s.get(k, 0)) for s in suites) for k in keys}


def step_pytest(ctx: CheckContext) -> StepOutcome:
    files = gpu_test_files(REPO_ROOT / "tests")
    if not files:
        raise StepSkipped(f"no test file under {REPO_ROOT / 'tests'} uses pytest.mark.gpu")
    junit, log_path = ctx.out_dir / "pytest-junit.xml", ctx.out_dir / "pytest-log.txt"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "gpu",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        *(str(f.relative_to(REPO_ROOT)) for f in files),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    if ctx.sizes.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU check runs the tests without a GPU too
    timeout_s = max(1.0, ctx.deadline_s - time.monotonic() - TIMEOUT_MARGIN_S)
    ctx.log(f"pytest -m gpu over {len(files)} file(s), timeout {timeout_s:.0f} s")
    with log_path.open("w", encoding="utf-8") as out:
        rc = run_killable(cmd, env, out, timeout_s)
    produced = tuple(p.name for p in (junit, log_path) if p.is_file())
    tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
    details: dict[str, Any] = {
        "command": " ".join(cmd[1:]),
        "exit_code": rc,
        "last_line": tail[0] if tail else "",
    }
    if rc is None:
        failure = f"pytest timed out after {timeout_s:.0f} s"
        return StepOutcome(details=details, files=produced, failure=failure)
    if junit.is_file():
        details.update(junit_counts(junit))
    failure = None if rc in (0, 5) else f"pytest exited {rc}: {details['last_line']} (see pytest-log.txt)"
    return StepOutcome(details=details, files=produced, failure=failure)


def run_killable(cmd: list[str], env: Mapping[str, str], out: IO[str], timeout_s: float) -> int | None:
    """Exit code of cmd, or None if it ran past timeout_s; its process group is killed if still running."""
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
