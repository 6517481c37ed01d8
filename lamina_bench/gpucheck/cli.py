"""Command line of the GPU check: `python -m lamina_bench.gpucheck OUT_DIR [options]`, the same as
`lamina-bench gpu-check OUT_DIR [options]`.

Only the standard library and the light modules (sizes, settings) load at import, so registering the
command costs nothing; torch, triton and the steps load inside `run_from_args`, once the options are
known to be valid. Exit codes: 0 every step ok or skipped, 1 a step failed, 2 bad options, 3 hard stop.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

from lamina_bench.errors import UserInputError
from lamina_bench.gpucheck.settings import DEFAULT_STEP_TIMEOUT_S, FAIL_ENV, HARD_STOP_GRACE_S, CheckSettings
from lamina_bench.gpucheck.sizes import DEVICES, STEP_NAMES

PROG = "python -m lamina_bench.gpucheck"
DESCRIPTION = (
    "Measure one GPU in one process: the gpu-marked tests, copy bandwidth, GEMM rate, the Triton decode "
    "kernel (correctness, then bandwidth), an operator profile of 70B-shaped layers and one measured sweep "
    "point with telemetry. Each step is time-boxed and failure-isolated; OUT_DIR/summary.json is rewritten "
    "after every step. Without CUDA (or with --device cpu) everything runs on the CPU at tiny sizes."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "out_dir", help="folder (created) for summary.json, log.txt, the pytest log, the profile, run.tar.gz"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller CUDA sizes and fewer points (on CPU sizes are tiny anyway)",
    )
    parser.add_argument(
        "--steps",
        metavar="A,B",
        help=f"comma-separated steps to run, in their fixed order (default: all): {', '.join(STEP_NAMES)}",
    )
    parser.add_argument(
        "--device", choices=DEVICES, help="where the steps run (default: cuda when torch sees one, else cpu)"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        metavar="S",
        help="overall time budget in seconds, shared out over the steps by weight; a step stuck past it is "
        f"stopped by ending the process {HARD_STOP_GRACE_S:.0f} s later (default: no budget)",
    )
    parser.add_argument(
        "--step-timeout-s",
        type=float,
        default=DEFAULT_STEP_TIMEOUT_S,
        metavar="S",
        help=f"time box of each step (default {DEFAULT_STEP_TIMEOUT_S:.0f}); a step still running "
        f"{HARD_STOP_GRACE_S:.0f} s after its box ends stops the process (exit 3)",
    )


def settings_from_args(args: argparse.Namespace, fail_env: str = "") -> CheckSettings:
    """The checked settings (UserInputError on a bad value). fail_env: the FAIL_ENV variable's value."""
    return CheckSettings(
        args.out_dir,  # as given: "" is an error, not the current folder
        quick=args.quick,
        budget_s=args.budget_s,
        step_timeout_s=args.step_timeout_s,
        device=args.device,
        steps=STEP_NAMES if args.steps is None else args.steps.split(","),
        fail_steps=tuple(n for n in fail_env.split(",") if n),
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Run the check; 0 when every step is ok or skipped, 1 when one failed (3: the hard stop's exit)."""
    settings = settings_from_args(args, os.environ.get(FAIL_ENV, ""))
    # torch, triton and the steps load only now: --help and option errors stay instant
    from lamina_bench.gpucheck.runner import GpuCheck, resolve_device
    from lamina_bench.gpucheck.summary import summary_table

    resolve_device(settings.device)  # --device cuda without CUDA: an error before anything is written
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    log = Log(settings.out_dir / "log.txt")
    try:
        summary = GpuCheck(settings, log).run()
        log("summary:\n" + summary_table(summary))
        log(f"status {summary['status']} in {summary['wall_s']:.0f} s -> {settings.out_dir}")
    finally:
        log.close()
    return 0 if summary["status"] == "ok" else 1


class Log:
    """Lines to stdout and a log file, each with seconds since the start; safe to call from two threads."""

    def __init__(self, path: Path) -> None:
        self.start_s = time.monotonic()
        self._file = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def __call__(self, message: str) -> None:
        text = f"[gpucheck {time.monotonic() - self.start_s:6.1f}s] {message}\n"
        with self._lock:
            sys.stdout.write(text)
            sys.stdout.flush()
            if not self._file.closed:
                self._file.write(text)
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit 2, like `lamina-bench`
        print(f"{PROG}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog=PROG, description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_from_args(args)
    except UserInputError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
