"""The GPU check's steps, their sizes per device and mode, and the arithmetic behind its numbers.

Nothing here imports torch: `lamina-bench gpu-check --help` and option checking use this module alone.
The byte and FLOP counts are pure functions, checked by hand in the tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lamina_bench.catalog.models import ModelSpec, kv_bytes_per_token
from lamina_bench.errors import UserInputError

# The steps in the order they run (decode_bandwidth divides by the copy bandwidth measured before it).
STEP_NAMES = (
    "pytest_gpu",
    "copy_bandwidth",
    "gemm",
    "decode_check",
    "decode_bandwidth",
    "profile",
    "sweep_point",
)
# Each step's share of an overall time budget: the full sizes' expected times on an H100, with headroom.
STEP_WEIGHTS: Mapping[str, float] = {
    "pytest_gpu": 80,
    "copy_bandwidth": 20,
    "gemm": 20,
    "decode_check": 35,
    "decode_bandwidth": 45,
    "profile": 140,
    "sweep_point": 80,
}
ATTENTION_MODEL = "llama3-70b"  # the shape of the decode kernel checks and the operator profile
BENCH_MODEL = "bench-llama-gqa"  # the small model built locally for the CPU profile and the sweep point
DEVICES = ("cuda", "cpu")
# Relative error bound of the kernel against the fp32 reference: fp32 runs without tf32 ("ieee"); 16-bit
# operands round p to the value dtype before p@V (FlashAttention practice), bf16 has 8 mantissa bits.
KERNEL_REL_TOL = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 2e-2}


@dataclass(frozen=True)
class CheckSizes:
    """Sizes and repeats of every step for one device and mode (see sizes_for)."""

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
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        for name in ("decode_dtype", "profile_dtype", "sweep_dtype"):  # the dtypes with a kernel bound
            if getattr(self, name) not in KERNEL_REL_TOL:
                raise ValueError(
                    f"{name} must be one of {', '.join(KERNEL_REL_TOL)}, got {getattr(self, name)!r}"
                )
        if min(self.copy_bytes, self.gemm_n, self.repeats, *self.decode_check_lens) < 1 or self.warmup < 0:
            raise ValueError("sizes and repeats must be positive (warmup >= 0)")


def sizes_for(device: str, quick: bool) -> CheckSizes:
    """The sizes for one device: on CUDA full or quick (`quick`), on CPU one tiny set whatever `quick` says.

    The CUDA sizes suit a data-center GPU with tens of GB of memory (H100 class): every decode point reads
    at least 1 GB of KV cache, far beyond any L2 cache, so repeats read device memory.
    """
    if device == "cpu":
        return CheckSizes(
            device="cpu",
            copy_bytes=64_000_000,
            gemm_n=256,
            decode_dtype="fp16",
            decode_points=(),
            decode_check_lens=(40, 17),
            profile_model=BENCH_MODEL,
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
    if device != "cuda":
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    # KV per token of one 70B layer in fp16: 2 * 8 heads * 128 * 2 B = 4096 B; (32, 8192) -> 1.07 GB.
    points = ((32, 8192), (128, 4096)) if quick else ((8, 32768), (32, 8192), (128, 4096), (256, 8192))
    return CheckSizes(
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


def parse_steps(text: str | Sequence[str]) -> tuple[str, ...]:
    """The steps named in `text` ("a,b" or a sequence of names), in the order they run; UserInputError
    for an unknown name or an empty list."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise UserInputError(f"--steps names no step; valid: {', '.join(STEP_NAMES)}")
    for name in names:
        if name not in STEP_NAMES:
            raise UserInputError(f"unknown step {name!r} in --steps; valid: {', '.join(STEP_NAMES)}")
    return tuple(n for n in STEP_NAMES if n in names)


# ---- pure arithmetic (tested by hand) ---------------------------------------------------------------


def copy_bytes_moved(nbytes: int) -> int:
    """Bytes a device-to-device copy of `nbytes` moves through memory: each byte read once, written once."""
    return 2 * nbytes


def gemm_flops(n: int) -> int:
    """FLOPs of an n x n x n matrix product: n^2 outputs, n multiply-adds (2 FLOPs) each."""
    return 2 * n**3


def decode_kv_bytes(batch: int, context: int, spec: ModelSpec, dtype: str) -> int:
    """KV bytes one layer's decode attention must read: K and V of every cached token, once.

    The catalog's KV bytes per token (2 * L * n_kv_heads * head_dim * e) over the L layers.
    """
    per_layer = kv_bytes_per_token(spec, dtype) // spec.num_layers
    return batch * context * per_layer


def gbps(nbytes: float, time_s: float) -> float:
    """Decimal GB (1e9 B) per second."""
    return nbytes / time_s / 1e9


def step_box_s(remaining_s: float, weights: Mapping[str, float], name: str, later: Sequence[str]) -> float:
    """The step's share of the remaining budget: its weight over the weights of itself and the steps
    after it, so time one step leaves unused rolls forward to the next."""
    total = weights[name] + sum(weights[n] for n in later)
    return max(0.0, remaining_s) * weights[name] / total
