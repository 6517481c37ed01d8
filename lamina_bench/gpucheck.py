"""One-call GPU check (issue 5, item 6): what one H100/H200 lease should measure, in one process.

    python -m lamina_bench.gpucheck OUT_DIR [--quick] [--budget-s 420]

Runs from the repository root without installing the package. The steps, in order, each time-boxed and
failure-isolated (a step that raises or outlives its box is recorded as failed and the next one runs):

1. pytest_gpu        `pytest -m gpu -q` over the test files that use the gpu marker (a subprocess, with
                     a timeout), junit xml + log into OUT_DIR
2. copy_bandwidth    device-to-device copy of a few GB: bytes read + written / median time
3. gemm              n x n x n bf16 matmul on random data: 2 n^3 / median time
4. decode_check      the Triton paged decode kernel (`reference_impl.attention.decode_attention`) against
                     the fp32 torch reference on a ragged 70B-shaped batch (relative error)
5. decode_bandwidth  the kernel at a few 70B-shaped (batch, context) points: KV bytes / median time, and
                     its ratio to the copy bandwidth
6. profile           operator profile of 70B-shaped layers (`lamina_bench.profile`) ->
                     OUT_DIR/<device>-cuda.json, the file the model looks up under results/profiles/
7. sweep_point       one measured sweep point (bench model, homogeneous) with NVML telemetry, its run
                     folder packed into OUT_DIR/run.tar.gz

OUT_DIR ends with summary.json (every step's status, wall time, box, error, and numbers with unit and
source), log.txt, pytest-junit.xml, pytest-log.txt, the profile and run.tar.gz: 6 files, under the 8 the
device tool returns. summary.json is rewritten after every step, so a killed run still leaves one.

Sources: times are `measured` (CUDA events, median of repeats after warm-up). The copy bandwidth and the
GEMM rate are `measured` too: their byte and FLOP counts are exact. The decode kernel's GB/s counts only
the KV cache it must read (q, output, block tables and split partials are left out), so it is `derived`,
as are ratios (DESIGN.md honesty rules).

Without CUDA every step runs on the CPU at tiny sizes (the profile on the small bench model, the kernel
check in Triton's interpreter); the kernel bandwidth is skipped with the reason, so the script can be
tested anywhere. Nothing here may import plotly or lamina_bench.report: the GPU machine has no plotly.
torch is imported inside the functions so that `lamina-bench gpu-check --help` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamina_bench.errors import UserInputError

FORMAT = "lamina-bench-gpucheck/1"
DEFAULT_BUDGET_S = 420.0  # 7 min of steps; the hard stop adds HARD_STOP_GRACE_S: under 8 min in all
HARD_STOP_GRACE_S = 50.0
MAX_OUT_FILES = 8  # the device tool returns at most 8 files from $OUT ...
MAX_OUT_FILE_BYTES = 16 * 1024 * 1024  # ... each at most 16 MiB (binary MiB, as the tool states it)
FAIL_ENV = "LAMINA_GPUCHECK_FAIL"  # comma-separated step names that raise at once (tests)
SOURCES = ("measured", "derived")
STATUSES = ("ok", "failed", "skipped")
REPO_ROOT = Path(__file__).resolve().parents[1]
ATTENTION_MODEL = "llama3-70b"  # 64 query heads, 8 KV heads, head_dim 128 (its HF config.json)
BLOCK_SIZE = 16  # tokens per KV page, as the engines use
DTYPE_NAMES = ("fp32", "fp16", "bf16")
# Relative error bound of the kernel against the fp32 reference: fp32 runs without tf32 ("ieee"); 16-bit
# operands round p to the value dtype before p@V (FlashAttention practice), bf16 has 8 mantissa bits.
KERNEL_REL_TOL = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 2e-2}


# ---- results --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Quantity:
    """One reported number: value, unit (decimal SI) and where it comes from."""

    value: float
    unit: str
    source: str

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if not (isinstance(self.value, int | float) and math.isfinite(self.value)):
            raise ValueError(f"value must be a finite number, got {self.value!r}")


@dataclass(frozen=True)
class StepOutcome:
    """What a step returns. failure: the step ran but its check failed (its numbers are kept)."""

    numbers: Mapping[str, Quantity] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    failure: str | None = None


class StepSkipped(Exception):
    """Raised by a step that cannot run here (the message is the reason)."""


class StepTimeout(BaseException):
    """Raised by the alarm when a step outlives its box; a BaseException so no `except Exception` eats it."""


@dataclass(frozen=True)
class StepResult:
    name: str
    status: str  # ok | failed | skipped
    wall_s: float
    time_box_s: float
    numbers: Mapping[str, Quantity] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    error: str | None = None  # one line, set exactly when status == failed
    reason: str | None = None  # why a step was skipped

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {self.status!r}")
        if (self.status == "failed") != (self.error is not None):
            raise ValueError("error must be set exactly when status is 'failed'")

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["numbers"] = {k: dataclasses.asdict(q) for k, q in self.numbers.items()}
        data["files"] = list(self.files)
        return data


def one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


# ---- sizes ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Sizes and repeats of every step for one device and mode (see plan_for)."""

    device: str  # cuda | cpu
    copy_bytes: int  # size of the copy's source buffer (float32); a copy moves twice this
    gemm_n: int
    decode_dtype: str
    decode_points: tuple[tuple[int, int], ...]  # (batch, context tokens per sequence)
    decode_check_lens: tuple[int, ...]  # context of each sequence in the ragged correctness check
    profile_model: str
    profile_dtype: str
    profile_batches: tuple[int, ...]
    profile_contexts: tuple[int, ...]
    profile_repeats: int
    sweep_batch: int
    sweep_context: int
    sweep_new_tokens: int
    sweep_repeats: int
    sweep_dtype: str
    warmup: int = 5
    repeats: int = 20

    def __post_init__(self) -> None:
        if self.device not in ("cuda", "cpu"):
            raise ValueError(f"device must be cuda or cpu, got {self.device!r}")
        for name in ("decode_dtype", "profile_dtype", "sweep_dtype"):
            if getattr(self, name) not in DTYPE_NAMES:
                raise ValueError(
                    f"{name} must be one of {', '.join(DTYPE_NAMES)}, got {getattr(self, name)!r}"
                )
        if min(self.copy_bytes, self.gemm_n, self.repeats, *self.decode_check_lens) < 1 or self.warmup < 0:
            raise ValueError("plan sizes and repeats must be positive (warmup >= 0)")


def plan_for(device: str, quick: bool) -> Plan:
    """Full and quick plans for one H100/H200 (KV of the decode points >= 1 GB, far over the 50-60 MB
    L2, so repeats read HBM); on CPU one tiny plan, whatever `quick` says."""
    if device == "cpu":
        return Plan(
            device="cpu",
            copy_bytes=64_000_000,
            gemm_n=256,
            decode_dtype="fp16",
            decode_points=(),
            decode_check_lens=(40, 17),
            profile_model="bench-llama-gqa",
            profile_dtype="fp32",
            profile_batches=(1, 4),
            profile_contexts=(16, 64),
            profile_repeats=2,
            sweep_batch=2,
            sweep_context=16,
            sweep_new_tokens=4,
            sweep_repeats=1,
            sweep_dtype="fp32",
            warmup=1,
            repeats=3,
        )
    # KV per token of one 70B layer in fp16: 2 * 8 heads * 128 * 2 B = 4096 B; (32, 8192) -> 1.07 GB.
    points = ((32, 8192), (128, 4096)) if quick else ((8, 32768), (32, 8192), (128, 4096), (256, 8192))
    return Plan(
        device="cuda",
        copy_bytes=1_000_000_000 if quick else 2_000_000_000,
        gemm_n=8192,
        decode_dtype="fp16",
        decode_points=points,
        decode_check_lens=(1000, 17, 2048, 1, 4096, 333),  # ragged: partial pages, one-token sequence
        profile_model=ATTENTION_MODEL,
        profile_dtype="fp16",
        profile_batches=(1, 32, 256) if quick else (1, 8, 32, 64, 128, 256),
        profile_contexts=(512, 8192) if quick else (512, 2048, 8192),
        profile_repeats=3 if quick else 5,
        sweep_batch=16,
        sweep_context=512,
        sweep_new_tokens=32 if quick else 128,
        sweep_repeats=1 if quick else 3,
        sweep_dtype="fp16",
        warmup=3 if quick else 5,
        repeats=10 if quick else 20,
    )


# ---- pure arithmetic (tested by hand) ---------------------------------------------------------------


def copy_bytes_moved(nbytes: int) -> int:
    """Bytes a device-to-device copy of `nbytes` moves through memory: each byte read once, written once."""
    return 2 * nbytes


def gemm_flops(n: int) -> int:
    """FLOPs of an n x n x n matrix product: n^2 outputs, n multiply-adds (2 FLOPs) each."""
    return 2 * n**3


def decode_kv_bytes(batch: int, context: int, num_kv_heads: int, head_dim: int, elem_bytes: int) -> int:
    """KV bytes one layer's decode attention must read: K and V of every cached token, once.

    Per token per layer 2 * n_kv_heads * head_dim * e (DESIGN.md, "KV bytes per token", with L = 1).
    """
    return batch * context * 2 * num_kv_heads * head_dim * elem_bytes


def gbps(nbytes: float, time_s: float) -> float:
    return nbytes / time_s / 1e9  # GB = 1e9 B


def step_box_s(remaining_s: float, weights: Mapping[str, float], name: str, later: list[str]) -> float:
    """The step's share of the remaining budget: its weight over the weights of itself and the steps
    after it, so time one step leaves unused rolls forward to the next."""
    total = weights[name] + sum(weights[n] for n in later)
    return max(0.0, remaining_s) * weights[name] / total


# ---- timing ---------------------------------------------------------------------------------------


def _time_s(fn: Callable[[], object], p) -> float:
    """Median seconds of fn() under the plan's warm-up and repeats (profile.median_time_s)."""
    from lamina_bench.measure.profile import median_time_s

    return median_time_s(fn, p.repeats, p.warmup, p.device)


# ---- the run ----------------------------------------------------------------------------------------


class _Log:
    """Lines to stdout and OUT_DIR/log.txt, each with seconds since the start; also a stream (write)."""

    def __init__(self, path: Path, start_s: float) -> None:
        self.path, self.start_s = path, start_s
        self._file = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def __call__(self, message: str) -> None:
        self.write(f"[gpucheck {time.monotonic() - self.start_s:6.1f}s] {message}\n")

    def write(self, text: str) -> None:
        with self._lock:
            sys.stdout.write(text)
            sys.stdout.flush()
            self._file.write(text)
            self._file.flush()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._file.close()


@dataclass
class CheckContext:
    """State of one check run, shared by its steps."""

    out_dir: Path
    work_dir: Path  # scratch (run store, bench models); not returned
    plan: Plan
    log: Callable[[str], None]
    results: list[StepResult] = field(default_factory=list)
    deadline_s: float = math.inf  # time.monotonic() when the current step's box ends

    def result(self, name: str) -> StepResult | None:
        return next((r for r in self.results if r.name == name), None)


def run_step(
    name: str, fn: Callable[[CheckContext], StepOutcome], ctx: CheckContext, box_s: float, fail: bool = False
) -> StepResult:
    """Run one step inside its time box; every exception becomes a failed result, never a raise.

    The box is enforced with SIGALRM (main thread only; elsewhere the step runs unboxed). A step stuck
    inside one C call (e.g. a hung kernel) is only stopped by the hard stop of `main`.
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
        _free_device_memory()
    status = "failed" if outcome.failure else "ok"
    return StepResult(
        name,
        status,
        time.monotonic() - start,
        box_s,
        outcome.numbers,
        outcome.details,
        outcome.files,
        error=outcome.failure,
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


def _free_device_memory() -> None:
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- step 1: the gpu-marked tests --------------------------------------------------------------------


def gpu_test_files(tests_dir: Path) -> list[Path]:
    """Test files that use the gpu marker: only these are collected, so a test module that needs a
    package the GPU machine lacks (plotly) cannot break the run with a collection error."""
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
        raise StepSkipped("no test file under tests/ uses pytest.mark.gpu")
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
    timeout_s = max(1.0, ctx.deadline_s - time.monotonic() - 3.0)  # the subprocess times out before the box
    ctx.log(f"pytest -m gpu over {len(files)} file(s), timeout {timeout_s:.0f} s")
    with log_path.open("w", encoding="utf-8") as out:
        rc = _run_killable(cmd, env, out, timeout_s)
    produced = tuple(p.name for p in (junit, log_path) if p.is_file())
    tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
    details: dict[str, Any] = {
        "command": " ".join(cmd[1:]),
        "exit_code": rc,
        "last_line": tail[0] if tail else "",
    }
    if rc is None:
        return StepOutcome(
            details=details, files=produced, failure=f"pytest timed out after {timeout_s:.0f} s"
        )
    if junit.is_file():
        details.update(junit_counts(junit))
    failure = None if rc in (0, 5) else f"pytest exited {rc}: {details['last_line']} (see pytest-log.txt)"
    return StepOutcome(details=details, files=produced, failure=failure)


def _run_killable(cmd: list[str], env: Mapping[str, str], out, timeout_s: float) -> int | None:
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


# ---- steps 2 and 3: the two ceilings ------------------------------------------------------------------


def step_copy(ctx: CheckContext) -> StepOutcome:
    import torch

    p = ctx.plan
    src = torch.randn(p.copy_bytes // 4, device=p.device, dtype=torch.float32)
    dst = torch.full_like(src, math.nan)  # poisoned: the check below proves every element was written
    t = _time_s(lambda: dst.copy_(src), p)
    if not torch.equal(dst, src):
        return StepOutcome(failure="copy destination differs from its source")
    moved = copy_bytes_moved(src.numel() * 4)
    numbers = {
        "copy_gbps": Quantity(gbps(moved, t), "GB/s", "measured"),
        "copy_time_ms": Quantity(t * 1e3, "ms", "measured"),
    }
    return StepOutcome(numbers, {"buffer_bytes": src.numel() * 4, "bytes_moved_per_copy": moved})


def step_gemm(ctx: CheckContext) -> StepOutcome:
    import torch

    p, n = ctx.plan, ctx.plan.gemm_n
    gen = torch.Generator(device=p.device).manual_seed(1)
    a = torch.randn(n, n, device=p.device, dtype=torch.bfloat16, generator=gen)  # random, never zeros
    b = torch.randn(n, n, device=p.device, dtype=torch.bfloat16, generator=gen)
    out = torch.empty(n, n, device=p.device, dtype=torch.bfloat16)
    t = _time_s(lambda: torch.matmul(a, b, out=out), p)
    rows = slice(0, 64)  # spot check 64 rows against an fp32 product of the same bf16 operands
    ref = a[rows].float() @ b.float()
    rel = float((out[rows].float() - ref).norm() / ref.norm())
    numbers = {
        "gemm_tflops": Quantity(gemm_flops(n) / t / 1e12, "TFLOP/s", "measured"),
        "gemm_time_ms": Quantity(t * 1e3, "ms", "measured"),
        "gemm_rel_err": Quantity(rel, "1", "measured"),
    }
    details = {"n": n, "dtype": "bf16", "flops": gemm_flops(n)}
    if p.device == "cpu":
        details["note"] = "tiny CPU product: exercises the code, not a ceiling"
    failure = None if rel < 2e-2 else f"bf16 product off by relative error {rel:.2e} (bound 2e-2)"
    return StepOutcome(numbers, details, failure=failure)


# ---- steps 4 and 5: the Triton decode kernel ---------------------------------------------------------


def _attention_shape() -> tuple[int, int, int]:
    """(query heads, KV heads, head_dim) of the 70B model in the catalog."""
    from lamina_bench.catalog.models import get_model

    spec = get_model(ATTENTION_MODEL)
    return spec.num_heads, spec.num_kv_heads, spec.head_dim


def _paged_batch(lens: tuple[int, ...], dtype_name: str, device: str, seed: int):
    """Random q and one layer's paged cache for sequences of `lens` tokens, pages scattered at random."""
    import torch

    heads, kv_heads, head_dim = _attention_shape()
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    gen = torch.Generator(device=device).manual_seed(seed)
    pages = [-(-n // BLOCK_SIZE) for n in lens]
    shape = (sum(pages), BLOCK_SIZE, kv_heads, head_dim)
    k = torch.randn(shape, device=device, dtype=dtype, generator=gen)
    v = torch.randn(shape, device=device, dtype=dtype, generator=gen)
    perm = torch.randperm(sum(pages), device=device, generator=gen).to(torch.int32)
    tables = torch.zeros(len(lens), max(pages), dtype=torch.int32, device=device)
    for i, start in enumerate(torch.tensor([0, *pages]).cumsum(0)[:-1].tolist()):
        tables[i, : pages[i]] = perm[start : start + pages[i]]
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    q = torch.randn(len(lens), heads, head_dim, device=device, dtype=dtype, generator=gen)
    return q, k, v, tables, seq_lens


def step_decode_check(ctx: CheckContext) -> StepOutcome:
    from reference_impl.attention import decode_attention, decode_attention_ref

    p = ctx.plan
    q, k, v, tables, lens = _paged_batch(p.decode_check_lens, p.decode_dtype, p.device, seed=2)
    scale = q.shape[-1] ** -0.5
    out, lse = decode_attention(q, k, v, tables, lens, scale, backend="triton")  # interpreter on CPU
    ref, ref_lse = decode_attention_ref(q.float(), k.float(), v.float(), tables, lens, scale)
    finite = bool(out.isfinite().all())
    rel = float((out.float() - ref).norm() / ref.norm())
    lse_err = float((lse - ref_lse).abs().max())
    tol = KERNEL_REL_TOL[p.decode_dtype]
    numbers = {
        "decode_rel_err": Quantity(rel, "1", "measured") if finite else None,
        "decode_lse_max_abs_err": Quantity(lse_err, "1", "measured") if finite else None,
    }
    details = {
        "context_lens": list(p.decode_check_lens),
        "dtype": p.decode_dtype,
        "rel_tol": tol,
        "backend": "triton (interpreter)" if p.device == "cpu" else "triton",
    }
    failure = None
    if not finite or not rel < tol or not lse_err < 1e-2:
        failure = (
            f"kernel vs fp32 reference: finite={finite}, rel err {rel:.2e} (tol {tol}), lse err {lse_err:.2e}"
        )
    return StepOutcome({k: n for k, n in numbers.items() if n is not None}, details, failure=failure)


def step_decode_bandwidth(ctx: CheckContext) -> StepOutcome:
    if ctx.plan.device != "cuda":
        raise StepSkipped("on CPU the Triton kernel runs in its interpreter, whose time is no bandwidth")
    from reference_impl.attention import decode_attention

    p = ctx.plan
    _, kv_heads, head_dim = _attention_shape()
    copy = ctx.result("copy_bandwidth")
    copy_gbps = copy.numbers["copy_gbps"].value if copy and "copy_gbps" in copy.numbers else None
    numbers, rows = {}, []
    for batch, context in p.decode_points:
        q, k, v, tables, lens = _paged_batch((context,) * batch, p.decode_dtype, p.device, seed=3)
        t = _time_s(lambda x=(q, k, v, tables, lens): decode_attention(*x, head_dim**-0.5), p)
        kv = decode_kv_bytes(batch, context, kv_heads, head_dim, k.element_size())
        tag = f"b{batch}_ctx{context}"
        numbers[f"{tag}_time_ms"] = Quantity(t * 1e3, "ms", "measured")
        numbers[f"{tag}_kv_gbps"] = Quantity(gbps(kv, t), "GB/s", "derived")
        if copy_gbps:
            numbers[f"{tag}_over_copy"] = Quantity(gbps(kv, t) / copy_gbps, "1", "derived")
        rows.append({"batch": batch, "context": context, "kv_bytes": kv})
        ctx.log(f"  decode B={batch} ctx={context}: {t * 1e6:.0f} us, {gbps(kv, t):.0f} GB/s of KV")
        del q, k, v, tables, lens
        _free_device_memory()
    details = {
        "points": rows,
        "dtype": p.decode_dtype,
        "block_size": BLOCK_SIZE,
        "copy_gbps_used": copy_gbps,
        "bytes_counted": "K and V of every cached token, once",
    }
    return StepOutcome(numbers, details)


# ---- step 6: the operator profile ---------------------------------------------------------------------


def step_profile(ctx: CheckContext) -> StepOutcome:
    from lamina_bench.catalog.local import nvml_driver_version
    from lamina_bench.measure.profile import ProfileSettings, profile_device
    from lamina_bench.model.profiles import write_profile

    p = ctx.plan
    driver = nvml_driver_version()
    settings = ProfileSettings(
        model=p.profile_model,
        device=p.device,
        dtype=p.profile_dtype,
        layers=2,
        batches=p.profile_batches,
        contexts=p.profile_contexts,
        repeats=p.profile_repeats,
        warmup=2,
        link=False,
        overhead=False,
        extra_versions={"driver": driver} if driver else {},
    )
    profile = profile_device(settings, progress=ctx.log)
    path = write_profile(profile, ctx.out_dir / f"{profile.name}.json")
    return StepOutcome(
        _profile_numbers(profile),
        {"profile": path.name, "model": p.profile_model, "dtype": p.profile_dtype, "layers_built": 2},
        files=(path.name,),
    )


def _profile_numbers(profile) -> dict[str, Quantity]:
    """Dense time at the smallest and largest batch; the largest attention point and its KV GB/s."""
    from lamina_bench.catalog.models import DTYPE_BYTES

    dense = sorted(profile.dense, key=lambda d: d.batch)
    att = max(profile.attention, key=lambda a: (a.batch * a.context_len, a.batch))
    m = profile.model
    kv = decode_kv_bytes(att.batch, att.context_len, m.num_kv_heads, m.head_dim, DTYPE_BYTES[profile.dtype])
    tag = f"b{att.batch}_ctx{att.context_len}"
    return {
        f"dense_layer_b{dense[0].batch}_ms": Quantity(dense[0].time_s * 1e3, "ms", "measured"),
        f"dense_layer_b{dense[-1].batch}_ms": Quantity(dense[-1].time_s * 1e3, "ms", "measured"),
        f"attention_layer_{tag}_ms": Quantity(att.time_s * 1e3, "ms", "measured"),
        f"attention_layer_{tag}_kv_gbps": Quantity(gbps(kv, att.time_s), "GB/s", "derived"),
    }


# ---- step 7: one measured sweep point with telemetry -----------------------------------------------------


def sweep_spec_dict(plan: Plan) -> dict[str, Any]:
    """The inline sweep spec: one homogeneous measured point of the bench model, no prediction."""
    return {
        "name": "gpucheck",
        "repeats": plan.sweep_repeats,
        "measured": [
            {
                "model": "bench-llama-gqa",
                "systems": ["homogeneous"],
                "device": plan.device,
                "dtype": plan.sweep_dtype,
                "batch_sizes": [plan.sweep_batch],
                "context_lens": [plan.sweep_context],
                "new_tokens": plan.sweep_new_tokens,
                "predict": False,
            }
        ],
    }


# Registered metrics of the sweep point reported in the summary; every one measured here (telemetry too).
_SWEEP_METRICS = ("throughput_tok_per_s", "tbt_p50_ms", "tbt_p99_ms", "tbt_mean_ms", "energy_j", "power_w_mean",
                  "sm_busy_pct_mean", "mem_busy_pct_mean", "dram_bw_util_pct_mean")  # fmt: skip


def step_sweep_point(ctx: CheckContext) -> StepOutcome:
    from lamina_bench.results.metrics import METRICS
    from lamina_bench.results.store import RunStore
    from lamina_bench.sweep.resume import manifest_spec
    from lamina_bench.sweep.run import Progress, run_sweep
    from lamina_bench.sweep.spec import parse_spec

    spec = parse_spec(sweep_spec_dict(ctx.plan), origin="gpucheck inline spec")
    run_id = f"gpucheck-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"
    record = manifest_spec(spec, "<gpucheck inline spec>", None)
    store = RunStore.create(ctx.work_dir / "runs", run_id=run_id, spec=record, argv=sys.argv)
    points = list(spec.points)
    progress = Progress(len(points), stream=_LineStream(ctx.log))
    run_sweep(spec, store, points, spec_path="<gpucheck inline spec>", progress=progress)
    store.finalize()
    archive = ctx.out_dir / "run.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(store.path, arcname=store.path.name)
    row = store.rows()[0]
    numbers = {
        k: Quantity(row.metrics[k], METRICS[k].unit, "measured") for k in _SWEEP_METRICS if k in row.metrics
    }
    details = {
        "run_id": run_id,
        "point": points[0].label(),
        "telemetry_samples": len(store.telemetry()),
        "telemetry_verdict": row.telemetry_verdict,
        "archive_bytes": archive.stat().st_size,
    }
    failure = f"sweep point failed: {row.error}" if not row.ok else None
    return StepOutcome(numbers, details, files=(archive.name,), failure=failure)


class _LineStream:
    """A text stream (for Progress) that hands each finished line to a log function."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log, self.buffer = log, ""

    def write(self, text: str) -> int:
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            self.log(line)
        return len(text)

    def flush(self) -> None:
        pass


def _finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


# ---- environment, summary, orchestration ------------------------------------------------------------------

STEPS: tuple[tuple[str, Callable[[CheckContext], StepOutcome], float], ...] = (
    # name, function, weight (share of the budget; the full plan's expected times with headroom)
    ("pytest_gpu", step_pytest, 80),
    ("copy_bandwidth", step_copy, 20),
    ("gemm", step_gemm, 20),
    ("decode_check", step_decode_check, 35),
    ("decode_bandwidth", step_decode_bandwidth, 45),
    ("profile", step_profile, 140),
    ("sweep_point", step_sweep_point, 80),
)
STEP_NAMES = tuple(name for name, _, _ in STEPS)


def environment(device: str) -> dict[str, Any]:
    """Device, driver and library versions; each field on its own so one failure loses only it."""
    import torch

    env: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
    }
    probes: dict[str, Callable[[], Any]] = {"triton": _triton_version, "nvidia_driver": _driver, "git": _git}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(
            device_name=props.name,
            cuda=torch.version.cuda,
            device_memory_bytes=props.total_memory,
            sm_count=props.multi_processor_count,
            capability=f"{props.major}.{props.minor}",
        )
    for key, probe in probes.items():
        try:
            env[key] = probe()
        except Exception as exc:  # noqa: BLE001 - record what could not be read
            env[key] = f"unavailable ({one_line(exc)})"
    return env


def _triton_version() -> str:
    import triton

    return triton.__version__


def _driver() -> str | None:
    from lamina_bench.catalog.local import nvml_driver_version

    return nvml_driver_version()


def _git() -> dict[str, Any]:
    from lamina_bench.results.manifest import git_state

    return git_state()


def out_files(out_dir: Path) -> list[Path]:
    return sorted(p for p in out_dir.rglob("*") if p.is_file())


def summary_dict(
    ctx: CheckContext,
    env: Mapping[str, Any],
    started: str,
    wall_s: float,
    budget_s: float,
    quick: bool,
    note: str | None = None,
) -> dict[str, Any]:
    failed = [r.name for r in ctx.results if r.status == "failed"]
    return {
        "format": FORMAT,
        "status": "failed" if failed or note else "ok",
        "failed_steps": failed,
        "note": note,
        "started_utc": started,
        "wall_s": wall_s,
        "budget_s": budget_s,
        "quick": quick,
        "plan": dataclasses.asdict(ctx.plan),
        "environment": dict(env),
        "steps": [r.as_dict() for r in ctx.results],
    }


def write_summary(out_dir: Path, summary: Mapping[str, Any]) -> Path:
    """summary.json, written to a temporary file and renamed, so a kill leaves the old or the new one."""
    path = out_dir / "summary.json"
    tmp = out_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(_jsonable(summary), indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class CheckSettings:
    out_dir: Path
    quick: bool = False
    budget_s: float = DEFAULT_BUDGET_S
    device: str | None = None  # None: cuda when torch sees one, else cpu
    fail_steps: tuple[str, ...] = ()  # steps that raise at once (failure isolation tests)
    steps: tuple[str, ...] = STEP_NAMES  # which steps run (the others are not listed)

    def __post_init__(self) -> None:
        if not (self.budget_s > 0 and math.isfinite(self.budget_s)):
            raise UserInputError(f"--budget-s must be a positive number of seconds, got {self.budget_s}")
        if self.device not in (None, "cuda", "cpu"):
            raise ValueError(f"device must be cuda or cpu, got {self.device!r}")
        for name in (*self.fail_steps, *self.steps):
            if name not in STEP_NAMES:
                raise ValueError(f"unknown step {name!r}; valid: {', '.join(STEP_NAMES)}")


class GpuCheck:
    """One run of the check: steps in order, summary rewritten after each."""

    def __init__(self, settings: CheckSettings, log: Callable[[str], None]) -> None:
        import torch

        device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cpu":
            os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton
        self.settings, self.started = settings, dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self.start_s = time.monotonic()
        self.work_dir = Path(tempfile.mkdtemp(prefix="lamina-gpucheck-"))
        self.ctx = CheckContext(settings.out_dir, self.work_dir, plan_for(device, settings.quick), log)
        self.env: dict[str, Any] = {"device": device}
        self.current: tuple[str, float, float] | None = None  # (step, its start, its box) while it runs
        self._lock = threading.Lock()

    def write(self, note: str | None = None) -> Path:
        s = self.settings
        summary = summary_dict(
            self.ctx, self.env, self.started, time.monotonic() - self.start_s, s.budget_s, s.quick, note
        )
        with self._lock:
            return write_summary(s.out_dir, summary)

    def run(self) -> dict[str, Any]:
        s, log = self.settings, self.ctx.log
        try:
            self.env = environment(self.ctx.plan.device)
        except Exception as exc:  # noqa: BLE001 - the steps still run
            self.env["error"] = one_line(exc)
        log(
            f"device {self.env.get('device_name', self.ctx.plan.device)}, torch {self.env.get('torch')}, "
            f"triton {self.env.get('triton')}, driver {self.env.get('nvidia_driver')}"
        )
        weights = {name: w for name, _, w in STEPS}
        chosen = [(n, f) for n, f, _ in STEPS if n in s.steps]
        # bench models are built with transformers: into the scratch folder unless the caller chose one
        own_cache = "LAMINA_BENCH_CACHE" not in os.environ
        if own_cache:
            os.environ["LAMINA_BENCH_CACHE"] = str(self.work_dir / "bench-models")
        try:
            for i, (name, fn) in enumerate(chosen):
                remaining = s.budget_s - (time.monotonic() - self.start_s)
                box = step_box_s(remaining, weights, name, [n for n, _ in chosen[i + 1 :]])
                self.ctx.results.append(self._one(name, fn, box))
                self.write()
        finally:
            if own_cache:
                os.environ.pop("LAMINA_BENCH_CACHE", None)
            shutil.rmtree(self.work_dir, ignore_errors=True)
        return json.loads((s.out_dir / "summary.json").read_text(encoding="utf-8"))

    def _one(self, name: str, fn: Callable[[CheckContext], StepOutcome], box: float) -> StepResult:
        log = self.ctx.log
        if box < 1.0:
            return StepResult(
                name, "failed", 0.0, box, error="not run: the time budget was used up before it"
            )
        log(f"step {name} (box {box:.0f} s)")
        self.current = (name, time.monotonic(), box)
        result = run_step(name, fn, self.ctx, box, fail=name in self.settings.fail_steps)
        self.current = None
        shown = ", ".join(f"{k}={q.value:.4g}{_unit(q.unit)}" for k, q in list(result.numbers.items())[:4])
        log(
            f"step {name}: {result.status} in {result.wall_s:.1f} s"
            f"{': ' + (result.error or result.reason or '') if result.status != 'ok' else ''} {shown}"
        )
        return result

    def hard_stop(self) -> None:
        """Record the step still in flight as failed and write the summary (called off the main thread)."""
        note = f"hard stop {HARD_STOP_GRACE_S:.0f} s after the budget: a step was stuck (e.g. in one C call)"
        if self.current is not None:
            name, start, box = self.current
            error = f"still running {HARD_STOP_GRACE_S:.0f} s after the budget; the process was stopped"
            self.ctx.results.append(StepResult(name, "failed", time.monotonic() - start, box, error=error))
        self.ctx.log(note)
        self.write(note)


def run_check(settings: CheckSettings, log: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Run the check into settings.out_dir (created) and return the summary (also in summary.json)."""
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    return GpuCheck(settings, log).run()


def summary_table(summary: Mapping[str, Any]) -> str:
    """A short plain-text table of the steps (the device tool returns the end of the output)."""
    lines = [f"{'step':<17} {'status':<8} {'wall_s':>7}  numbers / error"]
    for step in summary["steps"]:
        numbers = ", ".join(
            f"{k}={v['value']:.4g}{_unit(v['unit'])} ({v['source'][0]})"
            for k, v in list(step["numbers"].items())[:3]
        )
        text = step["error"] or step["reason"] or numbers or step["details"].get("last_line", "")
        lines.append(f"{step['name']:<17} {step['status']:<8} {step['wall_s']:>7.1f}  {text}")
    return "\n".join(lines)


def _unit(unit: str) -> str:
    return "" if unit == "1" else f" {unit}"  # "1": a dimensionless ratio


def check_out_dir(out_dir: Path) -> list[str]:
    """Problems with what the device tool can return from out_dir (empty list: all of it comes back)."""
    files = out_files(out_dir)
    problems = []
    if len(files) > MAX_OUT_FILES:
        problems.append(f"{len(files)} files, over the {MAX_OUT_FILES} the device tool returns")
    for f in files:
        if f.stat().st_size > MAX_OUT_FILE_BYTES:
            problems.append(f"{f.name} is {f.stat().st_size} B, over the 16 MiB a returned file may be")
        if len(f.relative_to(out_dir).parts) > 3:
            problems.append(f"{f.relative_to(out_dir)} is more than 2 folders deep")
    return problems


# ---- command line ------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", help="folder for summary.json, log.txt, the profile and run.tar.gz")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer points (a smoke run)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=DEFAULT_BUDGET_S,
        help=f"seconds shared out over the steps (default {DEFAULT_BUDGET_S:.0f}); the script "
        f"stops hard {HARD_STOP_GRACE_S:.0f} s after it",
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Exit code 0 when every step is ok or skipped, 1 when one failed."""
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fail = tuple(n for n in os.environ.get(FAIL_ENV, "").split(",") if n)
    settings = CheckSettings(out_dir, quick=args.quick, budget_s=args.budget_s, fail_steps=fail)
    log = _Log(out_dir / "log.txt", time.monotonic())
    check = GpuCheck(settings, log)
    stopper = threading.Timer(settings.budget_s + HARD_STOP_GRACE_S, _hard_stop, args=(check,))
    stopper.daemon = True
    stopper.start()
    try:
        summary = check.run()
    finally:
        stopper.cancel()
    log("summary:\n" + summary_table(summary))
    for problem in check_out_dir(out_dir):
        log(f"WARNING: {problem}")
    log(f"status {summary['status']} in {summary['wall_s']:.0f} s -> {out_dir}")
    log.close()
    return 0 if summary["status"] == "ok" else 1


def _hard_stop(check: GpuCheck) -> None:
    """Budget + grace passed and the main thread is stuck: write the summary so far and exit 3."""
    try:
        check.hard_stop()
    finally:
        os._exit(3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lamina_bench.gpucheck", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
