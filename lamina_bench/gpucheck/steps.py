"""The GPU check's measuring steps (pytest_gpu lives in pytest_step.py); STEPS lists all seven in order.

copy_bandwidth    device-to-device copy of a float32 buffer: bytes read + written / median time
gemm              n x n x n bf16 matmul on random data: 2 n^3 / median time, spot-checked against fp32
decode_check      the Triton paged decode kernel against the fp32 torch reference on a ragged batch of
                  the 70B model's attention shape (relative error of the output, max error of the lse)
decode_bandwidth  the kernel at a few (batch, context) points of that shape: KV bytes / median time, and
                  its ratio to the copy bandwidth (skipped on CPU, where Triton runs in its interpreter)
profile           operator profile of 70B-shaped layers (on CPU of the small bench model) with
                  `lamina_bench.measure.profile` -> OUT_DIR/<device>-<backend>.json, the file the
                  performance model looks up under results/profiles/
sweep_point       one measured sweep point (bench model, homogeneous) with telemetry, through the sweep
                  runner and the run store; its run folder packed into OUT_DIR/run.tar.gz

Times are `measured` (median of repeats after warm-up, CUDA events on a GPU). The copy bandwidth and the
GEMM rate are `measured` too: their byte and FLOP counts are exact. The decode kernel's GB/s counts only
the KV cache it must read (q, output, block tables and split partials are left out), so it is `derived`,
as are ratios.
"""

from __future__ import annotations

import datetime as dt
import gc
import math
import sys
import tarfile
from collections.abc import Callable
from typing import Any

import torch

from lamina_bench.catalog.local import nvml_driver_version
from lamina_bench.catalog.models import get_model
from lamina_bench.gpucheck.pytest_step import step_pytest
from lamina_bench.gpucheck.records import CheckContext, Quantity, StepOutcome, StepSkipped
from lamina_bench.gpucheck.sizes import (
    ATTENTION_MODEL,
    BENCH_MODEL,
    KERNEL_REL_TOL,
    CheckSizes,
    copy_bytes_moved,
    decode_kv_bytes,
    gbps,
    gemm_flops,
)
from lamina_bench.measure.profile import ProfileSettings, median_time_s, profile_device
from lamina_bench.model.profiles import Profile, write_profile
from lamina_bench.results.metrics import METRICS
from lamina_bench.results.store import RunStore
from lamina_bench.sweep.resume import manifest_spec
from lamina_bench.sweep.run import Progress, run_sweep
from lamina_bench.sweep.spec import parse_spec
from reference_impl.attention import decode_attention, decode_attention_ref
from reference_impl.attention.inputs import PagedInputs, random_paged_inputs
from reference_impl.dtypes import DTYPES
from reference_impl.kv_cache import DEFAULT_BLOCK_SIZE

GEMM_REL_TOL = 2e-2  # bf16 operands, fp32 accumulation
LSE_ABS_TOL = 1e-2
SPEC_ORIGIN = "<gpucheck inline spec>"
# Registered metrics of the sweep point reported in the summary; every one measured here (telemetry too).
SWEEP_METRICS = ("throughput_tok_per_s", "tbt_p50_ms", "tbt_p99_ms", "tbt_mean_ms", "energy_j", "power_w_mean",
                 "sm_busy_pct_mean", "mem_busy_pct_mean", "dram_bw_util_pct_mean")  # fmt: skip


def median_s(fn: Callable[[], object], sizes: CheckSizes) -> float:
    """Median seconds of fn() under the sizes' warm-up and repeats."""
    return median_time_s(fn, sizes.repeats, sizes.warmup, sizes.device)


def free_device_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- the two ceilings ---------------------------------------------------------------------------------


def step_copy(ctx: CheckContext) -> StepOutcome:
    s = ctx.sizes
    src = torch.randn(s.copy_bytes // 4, device=s.device, dtype=torch.float32)
    dst = torch.full_like(src, math.nan)  # poisoned: the check below proves every element was written
    t = median_s(lambda: dst.copy_(src), s)
    if not torch.equal(dst, src):
        return StepOutcome(failure="copy destination differs from its source")
    moved = copy_bytes_moved(src.numel() * 4)
    numbers = {
        "copy_gbps": Quantity(gbps(moved, t), "GB/s", "measured"),
        "copy_time_ms": Quantity(t * 1e3, "ms", "measured"),
    }
    return StepOutcome(numbers, {"buffer_bytes": src.numel() * 4, "bytes_moved_per_copy": moved})


def step_gemm(ctx: CheckContext) -> StepOutcome:
    s, n = ctx.sizes, ctx.sizes.gemm_n
    gen = torch.Generator(device=s.device).manual_seed(1)
    a = torch.randn(n, n, device=s.device, dtype=DTYPES["bf16"], generator=gen)  # random, never zeros
    b = torch.randn(n, n, device=s.device, dtype=DTYPES["bf16"], generator=gen)
    out = torch.empty(n, n, device=s.device, dtype=DTYPES["bf16"])
    t = median_s(lambda: torch.matmul(a, b, out=out), s)
    rows = slice(0, 64)  # spot check 64 rows against an fp32 product of the same bf16 operands
    ref = a[rows].float() @ b.float()
    rel = float((out[rows].float() - ref).norm() / ref.norm())
    numbers = {
        "gemm_tflops": Quantity(gemm_flops(n) / t / 1e12, "TFLOP/s", "measured"),
        "gemm_time_ms": Quantity(t * 1e3, "ms", "measured"),
        "gemm_rel_err": Quantity(rel, "1", "measured"),
    }
    details: dict[str, Any] = {"n": n, "dtype": "bf16", "flops": gemm_flops(n)}
    if s.device == "cpu":
        details["note"] = "tiny CPU product: exercises the code, not a ceiling"
    failure = None
    if not rel < GEMM_REL_TOL:
        failure = f"bf16 product off by relative error {rel:.2e} (bound {GEMM_REL_TOL})"
    return StepOutcome(numbers, details, failure=failure)


# ---- the Triton decode kernel ------------------------------------------------------------------------


def paged_inputs(lens: tuple[int, ...], dtype: str, device: str, seed: int) -> PagedInputs:
    """Random q and one layer's paged cache of the 70B model's attention shape, pages scattered."""
    m = get_model(ATTENTION_MODEL)
    return random_paged_inputs(
        lens, m.num_heads, m.num_kv_heads, m.head_dim, DEFAULT_BLOCK_SIZE, DTYPES[dtype], device, seed
    )


def step_decode_check(ctx: CheckContext) -> StepOutcome:
    s = ctx.sizes
    q, k, v, tables, lens = paged_inputs(s.decode_check_lens, s.decode_dtype, s.device, seed=2)
    scale = q.shape[-1] ** -0.5
    out, lse = decode_attention(q, k, v, tables, lens, scale, backend="triton")  # interpreter on CPU
    ref, ref_lse = decode_attention_ref(q.float(), k.float(), v.float(), tables, lens, scale)
    finite = bool(out.isfinite().all())
    rel = float((out.float() - ref).norm() / ref.norm())
    lse_err = float((lse - ref_lse).abs().max())
    tol = KERNEL_REL_TOL[s.decode_dtype]
    numbers = {}
    if finite:
        numbers["decode_rel_err"] = Quantity(rel, "1", "measured")
        numbers["decode_lse_max_abs_err"] = Quantity(lse_err, "1", "measured")
    details = {
        "context_lens": list(s.decode_check_lens),
        "dtype": s.decode_dtype,
        "rel_tol": tol,
        "lse_abs_tol": LSE_ABS_TOL,
        "backend": "triton (interpreter)" if s.device == "cpu" else "triton",
    }
    failure = None
    if not finite or not rel < tol or not lse_err < LSE_ABS_TOL:
        failure = (
            f"kernel vs fp32 reference: finite={finite}, rel err {rel:.2e} (tol {tol}), lse err {lse_err:.2e}"
        )
    return StepOutcome(numbers, details, failure=failure)


def step_decode_bandwidth(ctx: CheckContext) -> StepOutcome:
    s = ctx.sizes
    if s.device != "cuda":
        raise StepSkipped("on CPU the Triton kernel runs in its interpreter, whose time is no bandwidth")
    spec = get_model(ATTENTION_MODEL)
    copy = ctx.result("copy_bandwidth")
    copy_gbps = copy.numbers["copy_gbps"].value if copy and "copy_gbps" in copy.numbers else None
    numbers, rows = {}, []
    for batch, context in s.decode_points:
        x = paged_inputs((context,) * batch, s.decode_dtype, s.device, seed=3)
        t = median_s(lambda x=x: decode_attention(*x, spec.head_dim**-0.5), s)
        kv = decode_kv_bytes(batch, context, spec, s.decode_dtype)
        tag = f"b{batch}_ctx{context}"
        numbers[f"{tag}_time_ms"] = Quantity(t * 1e3, "ms", "measured")
        numbers[f"{tag}_kv_gbps"] = Quantity(gbps(kv, t), "GB/s", "derived")
        if copy_gbps:
            numbers[f"{tag}_over_copy"] = Quantity(gbps(kv, t) / copy_gbps, "1", "derived")
        rows.append({"batch": batch, "context": context, "kv_bytes": kv})
        ctx.log(f"  decode B={batch} ctx={context}: {t * 1e6:.0f} us, {gbps(kv, t):.0f} GB/s of KV")
        del x
        free_device_memory()
    details = {
        "points": rows,
        "dtype": s.decode_dtype,
        "block_size": DEFAULT_BLOCK_SIZE,
        "copy_gbps_used": copy_gbps,
        "bytes_counted": "K and V of every cached token, once",
    }
    return StepOutcome(numbers, details)


# ---- the operator profile -----------------------------------------------------------------------------


def step_profile(ctx: CheckContext) -> StepOutcome:
    s = ctx.sizes
    driver = nvml_driver_version()
    settings = ProfileSettings(
        model=s.profile_model,
        device=s.device,
        dtype=s.profile_dtype,
        layers=2,
        batches=s.profile_batches,
        contexts=s.profile_contexts,
        repeats=s.profile_repeats,
        warmup=2,
        link=False,
        overhead=False,
        extra_versions={"driver": driver} if driver else {},
    )
    profile = profile_device(settings, progress=ctx.log)
    path = write_profile(profile, ctx.out_dir / f"{profile.name}.json")
    details = {"profile": path.name, "model": s.profile_model, "dtype": s.profile_dtype, "layers_built": 2}
    return StepOutcome(profile_numbers(profile), details, files=(path.name,))


def profile_numbers(profile: Profile) -> dict[str, Quantity]:
    """Dense time at the smallest and largest batch; the largest attention point and its KV GB/s."""
    dense = sorted(profile.dense, key=lambda d: d.batch)
    att = max(profile.attention, key=lambda a: (a.batch * a.context_len, a.batch))
    kv = decode_kv_bytes(att.batch, att.context_len, profile.model, profile.dtype)
    tag = f"b{att.batch}_ctx{att.context_len}"
    return {
        f"dense_layer_b{dense[0].batch}_ms": Quantity(dense[0].time_s * 1e3, "ms", "measured"),
        f"dense_layer_b{dense[-1].batch}_ms": Quantity(dense[-1].time_s * 1e3, "ms", "measured"),
        f"attention_layer_{tag}_ms": Quantity(att.time_s * 1e3, "ms", "measured"),
        f"attention_layer_{tag}_kv_gbps": Quantity(gbps(kv, att.time_s), "GB/s", "derived"),
    }


# ---- one measured sweep point with telemetry -----------------------------------------------------------


def sweep_spec_dict(sizes: CheckSizes) -> dict[str, Any]:
    """The inline sweep spec: one homogeneous measured point of the bench model, no prediction."""
    return {
        "name": "gpucheck",
        "repeats": sizes.sweep_repeats,
        "measured": [
            {
                "model": BENCH_MODEL,
                "systems": ["homogeneous"],
                "device": sizes.device,
                "dtype": sizes.sweep_dtype,
                "batch_sizes": [sizes.sweep_batch],
                "context_lens": [sizes.sweep_context],
                "new_tokens": sizes.sweep_new_tokens,
                "predict": False,
            }
        ],
    }


def step_sweep_point(ctx: CheckContext) -> StepOutcome:
    spec = parse_spec(sweep_spec_dict(ctx.sizes), origin="gpucheck inline spec")
    run_id = f"gpucheck-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"
    record = manifest_spec(spec, SPEC_ORIGIN, None)
    store = RunStore.create(ctx.work_dir / "runs", run_id=run_id, spec=record, argv=sys.argv)
    points = list(spec.points)
    progress = Progress(len(points), stream=LineStream(ctx.log))
    run_sweep(spec, store, points, spec_path=SPEC_ORIGIN, progress=progress)
    store.finalize()
    archive = ctx.out_dir / "run.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(store.path, arcname=store.path.name)
    row = store.rows()[0]
    numbers = {
        k: Quantity(row.metrics[k], METRICS[k].unit, "measured") for k in SWEEP_METRICS if k in row.metrics
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


class LineStream:
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


# name -> step function, in the order the steps run (sizes.STEP_NAMES; weights in sizes.STEP_WEIGHTS)
STEPS: dict[str, Callable[[CheckContext], StepOutcome]] = {
    "pytest_gpu": step_pytest,
    "copy_bandwidth": step_copy,
    "gemm": step_gemm,
    "decode_check": step_decode_check,
    "decode_bandwidth": step_decode_bandwidth,
    "profile": step_profile,
    "sweep_point": step_sweep_point,
}
