"""Running the GPU check: each step in its time box, failures isolated, the summary rewritten after each.

A step that raises, or whose check fails, is recorded as failed and the next step runs; a step that cannot
run here raises StepSkipped. Each step runs inside a time box: the per-step timeout, or with an overall
budget the smaller of that and the step's share of the budget left (`sizes.step_box_s`). The box is
enforced with SIGALRM, which interrupts Python code but not a step stuck inside one C call (a hung kernel,
say); for that a watchdog thread stops the whole process `grace_s` after the box ends: it records the step
as failed, rewrites summary.json and exits with code 3. With a budget, that is at most budget + grace
after the start.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lamina_bench.errors import UserInputError
from lamina_bench.gpucheck.records import (
    CheckContext,
    StepOutcome,
    StepResult,
    StepSkipped,
    StepTimeout,
    one_line,
)
from lamina_bench.gpucheck.settings import FAIL_ENV, CheckSettings
from lamina_bench.gpucheck.sizes import STEP_WEIGHTS, sizes_for, step_box_s
from lamina_bench.gpucheck.steps import STEPS, free_device_memory
from lamina_bench.gpucheck.summary import environment, summary_dict, summary_table, unit_suffix, write_summary

StepFn = Callable[[CheckContext], StepOutcome]
HARD_STOP_EXIT = 3
MIN_BOX_S = 1.0  # a step whose box would be shorter is recorded as not run


def resolve_device(requested: str | None) -> str:
    """cuda or cpu. On cpu, Triton is put into its interpreter (only effective before triton is imported)."""
    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise UserInputError("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
    device = requested or ("cuda" if has_cuda else "cpu")
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    return device


# ---- one step in its box --------------------------------------------------------------------------------


def run_step(name: str, fn: StepFn, ctx: CheckContext, box_s: float, fail: bool = False) -> StepResult:
    """Run one step inside its time box; every exception becomes a failed result, never a raise.

    The box is enforced with SIGALRM in the main thread (elsewhere the step runs unboxed).
    """
    start = time.monotonic()
    ctx.deadline_s = start + box_s
    try:
        with _alarm(box_s):
            if fail:
                raise RuntimeError(f"failure injected ({FAIL_ENV} or fail_steps)")
            outcome = fn(ctx)
    except StepSkipped as exc:
        return StepResult(name, "skipped", time.monotonic() - start, box_s, reason=str(exc))
    except StepTimeout:
        error = f"timed out after its box of {box_s:.1f} s"
        return StepResult(name, "failed", time.monotonic() - start, box_s, error=error)
    except Exception as exc:  # noqa: BLE001 - a failing step is recorded and the next one runs
        return StepResult(name, "failed", time.monotonic() - start, box_s, error=one_line(exc))
    finally:
        free_device_memory()
    status = "failed" if outcome.failure else "ok"
    wall_s = time.monotonic() - start
    return StepResult(
        name, status, wall_s, box_s, outcome.numbers, outcome.details, outcome.files, error=outcome.failure
    )


class _alarm:
    """Context manager: raise StepTimeout in the main thread after `seconds` (no-op off the main thread)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.armed, self.previous = seconds, False, None

    def _fire(self, signum, frame) -> None:
        if self.armed:
            self.armed = False
            raise StepTimeout

    def __enter__(self) -> _alarm:
        if hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGALRM, self._fire)
            self.armed = True
            signal.setitimer(signal.ITIMER_REAL, max(self.seconds, 1e-3))
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.previous is not None:
            self.armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)


class Watchdog:
    """Calls `fire` (in its own thread) unless re-armed or disarmed before the deadline."""

    def __init__(self, fire: Callable[[], None]) -> None:
        self._fire, self._timer = fire, None

    def arm(self, deadline_s: float) -> None:
        """deadline_s: time.monotonic() at which to fire; inf disarms."""
        self.disarm()
        if math.isfinite(deadline_s):
            self._timer = threading.Timer(max(0.0, deadline_s - time.monotonic()), self._fire)
            self._timer.daemon = True
            self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


# ---- the run ----------------------------------------------------------------------------------------------


class GpuCheck:
    """One run of the check: the chosen steps in order, the summary rewritten after each.

    steps: name -> function (default steps.STEPS); exit_fn: how the hard stop ends the process.
    """

    def __init__(
        self,
        settings: CheckSettings,
        log: Callable[[str], None] = lambda _m: None,
        steps: Mapping[str, StepFn] | None = None,
        exit_fn: Callable[[int], object] = os._exit,
    ) -> None:
        self.settings, self.steps, self.exit_fn = settings, STEPS if steps is None else steps, exit_fn
        device = resolve_device(settings.device)
        self.started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self.start_s = time.monotonic()
        self.work_dir = Path(tempfile.mkdtemp(prefix="lamina-gpucheck-"))
        self.ctx = CheckContext(settings.out_dir, self.work_dir, sizes_for(device, settings.quick), log)
        self.env: dict[str, Any] = {"device": device}
        self.current: tuple[str, float, float] | None = None  # (step, its start, its box) while it runs
        self.summary: dict[str, Any] = {}
        self.watchdog = Watchdog(self._hard_stop)
        self._lock = threading.Lock()

    def write(self, note: str | None = None) -> Path:
        s, ctx = self.settings, self.ctx
        wall_s = time.monotonic() - self.start_s
        with self._lock:
            self.summary = summary_dict(
                ctx.results, ctx.sizes, self.env, s.as_record(), self.started, wall_s, note
            )
            return write_summary(s.out_dir, self.summary)

    def box_s(self, name: str, later: Sequence[str]) -> float:
        """The step's time box: the step timeout, capped by its share of the budget left (if a budget)."""
        s = self.settings
        if s.budget_s is None:
            return s.step_timeout_s
        remaining = s.budget_s - (time.monotonic() - self.start_s)
        return min(s.step_timeout_s, step_box_s(remaining, STEP_WEIGHTS, name, later))

    def _guard(self, box_s: float = math.inf) -> None:
        """Arm the watchdog for grace_s after box_s from now, and at the latest budget + grace after the
        start (box_s inf, no budget: disarm)."""
        s = self.settings
        deadline = time.monotonic() + box_s + s.grace_s
        if s.budget_s is not None:
            deadline = min(deadline, self.start_s + s.budget_s + s.grace_s)
        self.watchdog.arm(deadline)

    def run(self) -> dict[str, Any]:
        """Run the chosen steps into settings.out_dir (created); the summary, as in summary.json."""
        s, ctx = self.settings, self.ctx
        s.out_dir.mkdir(parents=True, exist_ok=True)
        self._guard(s.step_timeout_s)  # the environment probes (NVML, the driver) must not hang either
        try:
            self.env = environment(ctx.sizes.device)
        except Exception as exc:  # noqa: BLE001 - the steps still run
            self.env["error"] = one_line(exc)
        cuda, versions = self.env.get("cuda_device"), self.env.get("versions")
        name = cuda["name"] if isinstance(cuda, dict) else ctx.sizes.device
        versions = versions if isinstance(versions, dict) else {}
        ctx.log(
            f"device {name}, torch {versions.get('torch')}, triton {versions.get('triton')}, "
            f"driver {self.env.get('nvidia_driver')}"
        )
        self.write()
        # bench models are built with transformers: into the scratch folder unless the caller chose one
        own_cache = "LAMINA_BENCH_CACHE" not in os.environ
        if own_cache:
            os.environ["LAMINA_BENCH_CACHE"] = str(self.work_dir / "bench-models")
        try:
            for i, name in enumerate(s.steps):
                ctx.results.append(self._one(name, self.box_s(name, s.steps[i + 1 :])))
                self.write()
        finally:
            self.watchdog.disarm()
            if own_cache:
                os.environ.pop("LAMINA_BENCH_CACHE", None)
            shutil.rmtree(self.work_dir, ignore_errors=True)
        return self.summary

    def _one(self, name: str, box: float) -> StepResult:
        log = self.ctx.log
        if box < MIN_BOX_S:
            log(f"step {name}: not run, {box:.1f} s of the budget left for it")
            error = "not run: the time budget was used up before it"
            return StepResult(name, "failed", 0.0, box, error=error)
        log(f"step {name} (box {box:.0f} s)")
        self.current = (name, time.monotonic(), box)
        self._guard(box)
        result = run_step(name, self.steps[name], self.ctx, box, fail=name in self.settings.fail_steps)
        self._guard()  # between steps only the budget's end counts
        self.current = None
        shown = ", ".join(
            f"{k}={q.value:.4g}{unit_suffix(q.unit)}" for k, q in list(result.numbers.items())[:4]
        )
        why = f": {result.error or result.reason}" if result.status != "ok" else ""
        log(f"step {name}: {result.status} in {result.wall_s:.1f} s{why}" + (f" {shown}" if shown else ""))
        return result

    def hard_stop(self) -> None:
        """Record the step still in flight as failed and write the summary (called off the main thread)."""
        grace = self.settings.grace_s
        if self.current is not None:
            name, start, box = self.current
            error = f"still running {grace:g} s after its box of {box:.1f} s; the process was stopped"
            self.ctx.results.append(StepResult(name, "failed", time.monotonic() - start, box, error=error))
        note = f"hard stop: stuck {grace:g} s past a time box (e.g. inside one C call); exit {HARD_STOP_EXIT}"
        self.ctx.log(note)
        self.write(note)
        self.ctx.log("summary:\n" + summary_table(self.summary))

    def _hard_stop(self) -> None:
        try:
            self.hard_stop()
        finally:
            self.exit_fn(HARD_STOP_EXIT)
