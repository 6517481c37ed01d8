"""Per-operator time model of LLM decoding: measured profiles where they exist, a roofline otherwise.

The simulator (`simulate.py`) only composes the operator times defined here:

* dense part of one decoder layer (norms, QKV/O projections, MLP) as a function of batch size;
* the model head (final norm + LM head) once per iteration;
* decode attention of one layer as a function of batch and summed context;
* tensor-parallel all-reduce (ring: 2(n-1) steps, 2(n-1)/n of the bytes on each link);
* a point-to-point link (latency + bytes / bandwidth), used between the compute and attention pools.

Where no profile exists, each operator is a roofline, ``max(bytes / (peak_bw * eff_bw), flops / (peak *
eff_flops))`` plus a fixed launch overhead, with the efficiency factors stated below. A measured profile
(``results/profiles/<device>-<backend>.json``) replaces the roofline for that device.

Profile file format (``"format": "lamina-bench-profile/1"``; JSON, one object; `write_profile` /
`load_profile` are the only writer and reader, and `lamina_bench/profile.py` must write through them)::

    {
      "format": "lamina-bench-profile/1",
      "device": "H100",              # catalog name (hardware.py), or "cpu"
      "backend": "cuda",             # cuda | rocm | cpu | ...
      "date": "2025-06-01",          # ISO date of the measurement
      "versions": {"torch": "2.11.0", "triton": "3.6.0", "python": "3.12.3", "driver": "..."},
      "dtype": "fp16",               # element type of weights, activations and KV
      "tp": 1,                       # tensor-parallel degree the dense points were measured at
      "model": {...},                # the profiled shape: every field of models.ModelSpec
      "dense": [{"batch": 1, "time_s": 1.2e-4}, ...],
          # one decoder layer's dense part (everything but the attention core) for `batch` tokens,
          # on one device holding 1/tp of the layer; no all-reduce included
      "attention": [{"batch": 8, "context_len": 1024, "time_s": 5.1e-5}, ...],
          # one layer's decode attention core for `batch` sequences of `context_len` cached tokens each,
          # all heads of the model on one device
      "head": [{"batch": 1, "time_s": 3.0e-4}, ...],           # optional: final norm + LM head (+ sampling)
      "link": [{"nbytes": 4096, "time_s": 2.0e-5}, ...],       # optional: one-way message between workers
      "allreduce": [{"nbytes": 65536, "world_size": 2, "time_s": 3.0e-5}, ...],   # optional
      "iteration_overhead_s": 0.0,   # optional: fixed per-iteration cost of the engine (scheduler etc.)
      "engine_steps": [{"batch": 1, "context_len": 68, "time_s": 0.007}, ...],
          # optional: measured decode steps of the homogeneous engine on one device (sampling, cache
          # bookkeeping, KV writes included); what the operators above do not explain becomes a
          # per-iteration engine cost, interpolated in batch (constant outside the measured batches)
      "lamina_steps": [{"batch": 1, "context_len": 68, "time_s": 0.03}, ...]
          # optional: the same for the Lamina runtime (1 compute + 1 attention worker, no pipelining):
          # the unexplained part becomes a per-layer exchange cost (message handling on both workers)
    }

Using a profile: for the profiled shape (same hidden/intermediate/head sizes, dtype and tp) dense time is
interpolated between the measured batch points (source ``measured``). For another shape or tp, the
points are fitted with ``t = bytes / bw_eff + flops / flops_eff`` (non-negative least squares on
relative error) and the fit is applied to the new shape's bytes and flops (source ``modeled``). One
shape cannot separate a fixed launch cost from weight streaming (both are constant in batch), so the
fixed cost is folded into ``bw_eff`` and scales with layer size: profile a shape close in size to the
models you will predict (e.g. one layer of a 7B-70B model on a GPU). Attention
is fitted with ``t = c0 + c1 * batch + kv_bytes / bw_eff`` for every shape (``measured`` for the profiled
shape, ``modeled`` otherwise). A profile taken on device A and applied to device B rescales
``bw_eff`` and ``flops_eff`` by B's datasheet peaks over A's; that prediction's source is ``derived``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from lamina_bench.errors import UserInputError
from lamina_bench.hardware import DeviceSpec, get_device
from lamina_bench.models import DTYPE_BYTES, ModelSpec, kv_bytes_per_token, layer_matmul_params, weight_bytes

PROFILE_FORMAT = "lamina-bench-profile/1"
DEFAULT_PROFILE_DIR = Path(__file__).resolve().parents[1] / "results" / "profiles"
SOURCES = ("measured", "modeled", "derived")
ROOFLINE = "roofline"

# ---- roofline constants (used only where no measured profile exists) -----------------------------
# Stated assumptions, not measurements; a profile replaces all of them for its device.
# Large bf16 GEMMs with cuBLAS typically reach ~65-75% of the datasheet dense peak on H100-class parts.
DENSE_FLOPS_EFFICIENCY = 0.70
# Streaming reads of weights through GEMV/GEMM kernels reach ~80% of datasheet HBM bandwidth.
WEIGHT_BW_EFFICIENCY = 0.80
# Paged decode-attention kernels (vLLM / FlashInfer class) reach ~70% of HBM bandwidth on long contexts.
ATTENTION_BW_EFFICIENCY = 0.70
# Attention cores are tiny GEMMs; their flops run well below peak.
ATTENTION_FLOPS_EFFICIENCY = 0.50
# Kernel launches of one layer under CUDA graphs: ~8 kernels x ~2-3 us.
DENSE_LAYER_OVERHEAD_S = 20e-6
ATTENTION_LAYER_OVERHEAD_S = 5e-6
# Bus bandwidth NCCL reaches on NVLink for MB-sized all-reduces, as a fraction of per-direction peak.
INTRA_LINK_EFFICIENCY = 0.80
# Per ring step latency of an NVLink all-reduce (NCCL small-message all-reduce ~10-20 us for 8 steps).
INTRA_LINK_STEP_LATENCY_S = 2e-6
# GPUDirect RDMA one-way latency incl. software (Lamina uses a host-bypassing stack): a few us.
NIC_LATENCY_S = 10e-6
# Achievable share of NIC line rate for large RDMA messages.
NIC_EFFICIENCY = 0.90
# Share of each device's memory kept for activations, CUDA graphs and allocator slack; vLLM's default
# gpu_memory_utilization is 0.9, i.e. the same 10%.
WORKSPACE_RESERVE_FRACTION = 0.10


# ---- shape arithmetic (pure functions of ModelSpec) ---------------------------------------------


def layer_activation_bytes_per_token(spec: ModelSpec, dtype: str) -> float:
    """Activation bytes one token moves through a layer's GEMMs (inputs + outputs), per element size.

    x->QKV (d in, d + 2*d_kv out), attn-out->O (d in, d out), x->gate/up (d in, 2i or i out),
    act->down (i in, d out).
    """
    d, i = spec.hidden_size, spec.intermediate_size
    d_kv = spec.num_kv_heads * spec.head_dim
    up_out = 2 * i if spec.mlp == "swiglu" else i
    return (d + (d + 2 * d_kv) + 2 * d + d + up_out + i + d) * DTYPE_BYTES[dtype]


def dense_layer_bytes(spec: ModelSpec, dtype: str, batch, tp: int = 1):
    """Bytes one device moves for one layer's dense part at tensor-parallel degree `tp`."""
    e = DTYPE_BYTES[dtype]
    return (layer_matmul_params(spec) * e + batch * layer_activation_bytes_per_token(spec, dtype)) / tp


def dense_layer_flops(spec: ModelSpec, batch, tp: int = 1):
    """FLOPs of one layer's dense part on one device: 2 per parameter per token."""
    return 2.0 * layer_matmul_params(spec) * batch / tp


def head_bytes(spec: ModelSpec, dtype: str, batch, tp: int = 1):
    """Bytes of final norm + LM head on one device (the LM head matrix dominates)."""
    e = DTYPE_BYTES[dtype]
    return (spec.vocab_size * spec.hidden_size * e + batch * (spec.hidden_size + spec.vocab_size) * e) / tp


def head_flops(spec: ModelSpec, batch, tp: int = 1):
    return 2.0 * spec.vocab_size * spec.hidden_size * batch / tp


def kv_bytes_per_token_per_layer(spec: ModelSpec, dtype: str) -> float:
    return kv_bytes_per_token(spec, dtype) / spec.num_layers


def attention_layer_bytes(spec: ModelSpec, dtype: str, batch, sum_context, kv_fraction: float = 1.0):
    """Bytes one layer's decode attention moves on a device holding `kv_fraction` of the KV.

    KV read for `sum_context` cached tokens plus q in / output out (d elements each) per sequence.
    """
    e = DTYPE_BYTES[dtype]
    qo = batch * 2 * spec.num_heads * spec.head_dim * e
    return (sum_context * kv_bytes_per_token_per_layer(spec, dtype) + qo) * kv_fraction


def attention_layer_flops(spec: ModelSpec, sum_context, kv_fraction: float = 1.0):
    """QK^T and PV: 2 * 2 * n_heads * head_dim flops per cached token per layer."""
    return 4.0 * spec.num_heads * spec.head_dim * sum_context * kv_fraction


def ring_allreduce_bytes_per_link(nbytes, world_size: int):
    """Bytes each device sends in a ring all-reduce of `nbytes`: 2(n-1)/n of the buffer."""
    return 2.0 * (world_size - 1) / world_size * nbytes


def link_time_s(nbytes, latency_s: float, bandwidth_bytes_per_s: float):
    """Point-to-point message time: latency + bytes / bandwidth."""
    return latency_s + nbytes / bandwidth_bytes_per_s


def min_link_bandwidth_bytes_per_s(
    spec: ModelSpec, dtype: str, batch: int, mtime_s: float, atime_s: float, slowdown: float
) -> float:
    """Link bandwidth that keeps network time within `slowdown` x (MTIME + ATIME).

    Lamina (arXiv 2405.01814 v2): (2 + 2/G) * e * d * B * L / (alpha * (MTIME(B) + ATIME(B, l))),
    with MTIME / ATIME the per-iteration dense and attention times of the whole model.
    """
    if slowdown <= 0 or mtime_s + atime_s <= 0:
        raise UserInputError(f"slowdown ({slowdown}) and MTIME + ATIME ({mtime_s + atime_s} s) must be > 0")
    g = spec.num_heads / spec.num_kv_heads
    per_token_layer = (2.0 + 2.0 / g) * DTYPE_BYTES[dtype] * spec.hidden_size
    return per_token_layer * batch * spec.num_layers / (slowdown * (mtime_s + atime_s))


# ---- memory model -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolMemory:
    """Memory of one pool: what the weights take per device and how many KV tokens fit in the rest."""

    devices: int
    memory_bytes_per_device: float
    usable_bytes_per_device: float  # after the workspace reserve
    weight_bytes_per_device: float
    kv_bytes_per_device: float
    kv_capacity_tokens: int

    def max_batch_at_context(self, context_len: int) -> int:
        """Sequences of `context_len` tokens the pool's KV holds at once."""
        if context_len <= 0:
            raise UserInputError(f"context_len must be > 0, got {context_len}")
        return self.kv_capacity_tokens // context_len


def pool_memory(
    spec: ModelSpec,
    device: DeviceSpec,
    devices: int,
    dtype: str,
    weight_shards: int | None,
    holds_kv: bool = True,
    reserve_fraction: float = WORKSPACE_RESERVE_FRACTION,
    label: str = "",
) -> PoolMemory:
    """Memory plan of `devices` x `device`.

    weight_shards: the weights are split over this many devices (tensor parallel degree of one replica);
    None = the pool holds no weights (Lamina attention pool). KV (if `holds_kv`) is spread over all
    devices; with more devices than KV heads, heads are replicated, so each device holds 1/num_kv_heads.
    """
    usable = device.memory_bytes * (1.0 - reserve_fraction)
    w = 0.0 if weight_shards is None else weight_bytes(spec, dtype) / weight_shards
    if w > usable:
        need_gb, have_gb = w / 1e9, usable / 1e9
        raise UserInputError(
            f"{spec.name} does not fit on {label or f'{devices}x{device.name}'}: weights need {need_gb:.1f} GB "
            f"per device ({dtype}, split over {weight_shards} device(s)), each {device.name} has {have_gb:.1f} GB usable "
            f"({device.memory_bytes / 1e9:.0f} GB minus {reserve_fraction:.0%} workspace)"
        )
    kv_per_device = usable - w if holds_kv else 0.0
    kv_share = max(1.0 / devices, 1.0 / spec.num_kv_heads) if weight_shards is not None else 1.0 / devices
    tokens = int(kv_per_device / (kv_bytes_per_token(spec, dtype) * kv_share)) if holds_kv else 0
    return PoolMemory(devices, float(device.memory_bytes), usable, w, kv_per_device, tokens)


# ---- measured profiles ------------------------------------------------------------------------------


def _check_positive(what: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise UserInputError(f"profile: {what} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class DensePoint:
    batch: int
    time_s: float

    def __post_init__(self) -> None:
        _check_positive("dense/head batch", self.batch)
        _check_positive("dense/head time_s", self.time_s)


@dataclass(frozen=True)
class AttentionPoint:
    batch: int
    context_len: int
    time_s: float

    def __post_init__(self) -> None:
        _check_positive("attention batch", self.batch)
        _check_positive("attention context_len", self.context_len)
        _check_positive("attention time_s", self.time_s)


@dataclass(frozen=True)
class TransferPoint:
    nbytes: int
    time_s: float

    def __post_init__(self) -> None:
        _check_positive("link nbytes", self.nbytes)
        _check_positive("link time_s", self.time_s)


@dataclass(frozen=True)
class AllReducePoint:
    nbytes: int
    world_size: int
    time_s: float

    def __post_init__(self) -> None:
        _check_positive("allreduce nbytes", self.nbytes)
        if not (isinstance(self.world_size, int) and self.world_size >= 2):
            raise UserInputError(
                f"profile: allreduce world_size must be an int >= 2, got {self.world_size!r}"
            )
        _check_positive("allreduce time_s", self.time_s)


@dataclass(frozen=True)
class StepPoint:
    batch: int
    context_len: int  # mean cached tokens per sequence over the measured steps
    time_s: float

    def __post_init__(self) -> None:
        _check_positive("step batch", self.batch)
        _check_positive("step context_len", self.context_len)
        _check_positive("step time_s", self.time_s)


@dataclass(frozen=True)
class Profile:
    """Measured operator times of one device and backend for one model shape (format in module doc)."""

    device: str
    backend: str
    date: str
    versions: dict[str, str]
    dtype: str
    tp: int
    model: ModelSpec
    dense: tuple[DensePoint, ...]
    attention: tuple[AttentionPoint, ...]
    head: tuple[DensePoint, ...] = ()
    link: tuple[TransferPoint, ...] = ()
    allreduce: tuple[AllReducePoint, ...] = ()
    iteration_overhead_s: float = 0.0
    engine_steps: tuple[StepPoint, ...] = ()  # measured decode steps of the homogeneous engine (1 device)
    lamina_steps: tuple[StepPoint, ...] = ()  # measured decode steps of the Lamina runtime (1 + 1 workers)

    def __post_init__(self) -> None:
        for name in ("device", "backend", "date"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise UserInputError(f"profile: '{name}' must be a non-empty string")
        if self.dtype not in DTYPE_BYTES:
            raise UserInputError(f"profile: unknown dtype {self.dtype!r}; valid: {', '.join(DTYPE_BYTES)}")
        if not (isinstance(self.tp, int) and self.tp >= 1):
            raise UserInputError(f"profile: tp must be an int >= 1, got {self.tp!r}")
        if len(self.dense) < 2 or len(self.attention) < 2:
            raise UserInputError("profile: needs at least 2 dense points and 2 attention points")
        if self.iteration_overhead_s < 0:
            raise UserInputError("profile: iteration_overhead_s must be >= 0")

    @property
    def name(self) -> str:
        return f"{self.device}-{self.backend}"


def _model_from_dict(data: dict) -> ModelSpec:
    names = {f.name for f in dataclasses.fields(ModelSpec)}
    missing = names - set(data)
    if missing:
        raise UserInputError(f"profile: model is missing fields {sorted(missing)}")
    return ModelSpec(**{k: data[k] for k in names})


def profile_to_dict(profile: Profile) -> dict:
    return {
        "format": PROFILE_FORMAT,
        "device": profile.device,
        "backend": profile.backend,
        "date": profile.date,
        "versions": dict(profile.versions),
        "dtype": profile.dtype,
        "tp": profile.tp,
        "model": dataclasses.asdict(profile.model),
        "dense": [dataclasses.asdict(p) for p in profile.dense],
        "attention": [dataclasses.asdict(p) for p in profile.attention],
        "head": [dataclasses.asdict(p) for p in profile.head],
        "link": [dataclasses.asdict(p) for p in profile.link],
        "allreduce": [dataclasses.asdict(p) for p in profile.allreduce],
        "iteration_overhead_s": profile.iteration_overhead_s,
        "engine_steps": [dataclasses.asdict(p) for p in profile.engine_steps],
        "lamina_steps": [dataclasses.asdict(p) for p in profile.lamina_steps],
    }


def profile_from_dict(data: dict) -> Profile:
    if data.get("format") != PROFILE_FORMAT:
        raise UserInputError(f"profile: format is {data.get('format')!r}, expected {PROFILE_FORMAT!r}")
    try:
        return Profile(
            device=data["device"],
            backend=data["backend"],
            date=data["date"],
            versions={str(k): str(v) for k, v in data.get("versions", {}).items()},
            dtype=data["dtype"],
            tp=data.get("tp", 1),
            model=_model_from_dict(data["model"]),
            dense=tuple(DensePoint(**p) for p in data["dense"]),
            attention=tuple(AttentionPoint(**p) for p in data["attention"]),
            head=tuple(DensePoint(**p) for p in data.get("head", [])),
            link=tuple(TransferPoint(**p) for p in data.get("link", [])),
            allreduce=tuple(AllReducePoint(**p) for p in data.get("allreduce", [])),
            iteration_overhead_s=float(data.get("iteration_overhead_s", 0.0)),
            engine_steps=tuple(StepPoint(**p) for p in data.get("engine_steps", [])),
            lamina_steps=tuple(StepPoint(**p) for p in data.get("lamina_steps", [])),
        )
    except (KeyError, TypeError) as exc:
        raise UserInputError(f"profile: malformed ({type(exc).__name__}: {exc})") from None


def write_profile(profile: Profile, path: str | Path) -> Path:
    """Write `profile` as JSON, atomically; the profiler calls this and nothing else."""
    from lamina_bench.results import atomic_write_json

    path = Path(path)
    if path.parent.exists() and not path.parent.is_dir():
        raise UserInputError(f"cannot write the profile into {path.parent}: it is not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, profile_to_dict(profile))
    return path


def load_profile(path: str | Path) -> Profile:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserInputError(f"profile file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise UserInputError(f"profile {path} is not valid JSON: {exc}") from None
    return profile_from_dict(data)


def find_profile(device: str, backend: str = "cuda", profile_dir: str | Path | None = None) -> Profile | None:
    """The profile `<profile_dir>/<device>-<backend>.json`, or None when there is none."""
    path = Path(profile_dir or DEFAULT_PROFILE_DIR) / f"{device}-{backend}.json"
    return load_profile(path) if path.is_file() else None


# ---- fitting ----------------------------------------------------------------------------------------


def nonneg_fit(features: np.ndarray, times_s: np.ndarray) -> np.ndarray:
    """Non-negative least squares on relative error, by trying every column subset (few columns)."""
    x = features / times_s[:, None]
    y = np.ones_like(times_s)
    ncol = features.shape[1]
    best, best_err = np.zeros(ncol), math.inf
    for k in range(1, ncol + 1):
        for cols in itertools.combinations(range(ncol), k):
            coef, *_ = np.linalg.lstsq(x[:, cols], y, rcond=None)
            if np.any(coef < 0):
                continue
            full = np.zeros(ncol)
            full[list(cols)] = coef
            err = float(np.sum((x @ full - y) ** 2))
            if err < best_err - 1e-15:
                best, best_err = full, err
    return best


def same_layer_shape(a: ModelSpec, b: ModelSpec) -> bool:
    keys = ("hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "head_dim", "mlp", "qkv_bias")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def _interp_extrap(x, xp: np.ndarray, fp: np.ndarray):
    """Piecewise-linear interpolation; beyond the ends, the end segments' slopes (never below 0)."""
    y = np.interp(x, xp, fp)
    lo_slope = max((fp[1] - fp[0]) / (xp[1] - xp[0]), 0.0)
    hi_slope = max((fp[-1] - fp[-2]) / (xp[-1] - xp[-2]), 0.0)
    y = np.where(x < xp[0], fp[0] - lo_slope * (xp[0] - x), y)
    y = np.where(x > xp[-1], fp[-1] + hi_slope * (x - xp[-1]), y)
    return np.maximum(y, 0.0)


@dataclass(frozen=True)
class OpTime:
    """A predicted operator time with where it came from."""

    time_s: np.ndarray | float
    source: str
    profile: str

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")


@dataclass(frozen=True)
class _ProfileFits:
    """Coefficients fitted once per profile (see module doc)."""

    dense: np.ndarray  # 1/bw_eff [s/B], 1/flops_eff [s/flop]
    attention: np.ndarray  # c0 [s], per sequence [s], 1/bw_eff [s/B]
    head_batch: np.ndarray | None
    head_time_s: np.ndarray | None
    dense_batch: np.ndarray
    dense_time_s: np.ndarray
    link: np.ndarray | None  # latency [s], 1/bw [s/B]
    allreduce: np.ndarray | None  # per ring step [s], 1/bw per link [s/B]


def _fit_profile(p: Profile) -> _ProfileFits:
    dense = sorted(p.dense, key=lambda q: q.batch)
    db = np.array([q.batch for q in dense], dtype=float)
    dt = np.array([q.time_s for q in dense])
    feats = np.stack(
        [dense_layer_bytes(p.model, p.dtype, db, p.tp), dense_layer_flops(p.model, db, p.tp)], axis=1
    )
    ab = np.array([q.batch for q in p.attention], dtype=float)
    actx = np.array([q.batch * q.context_len for q in p.attention], dtype=float)
    at = np.array([q.time_s for q in p.attention])
    afeats = np.stack([np.ones_like(ab), ab, attention_layer_bytes(p.model, p.dtype, ab, actx)], axis=1)
    head = sorted(p.head, key=lambda q: q.batch)
    link = allreduce = None
    if p.link:
        nb = np.array([q.nbytes for q in p.link], dtype=float)
        link = nonneg_fit(np.stack([np.ones_like(nb), nb], axis=1), np.array([q.time_s for q in p.link]))
    if p.allreduce:
        nb = np.array([q.nbytes for q in p.allreduce], dtype=float)
        ws = np.array([q.world_size for q in p.allreduce], dtype=float)
        feats_ar = np.stack([2.0 * (ws - 1), ring_allreduce_bytes_per_link(nb, ws)], axis=1)
        allreduce = nonneg_fit(feats_ar, np.array([q.time_s for q in p.allreduce]))
    return _ProfileFits(
        dense=nonneg_fit(feats, dt),
        attention=nonneg_fit(afeats, at),
        head_batch=np.array([q.batch for q in head], dtype=float) if len(head) >= 2 else None,
        head_time_s=np.array([q.time_s for q in head]) if len(head) >= 2 else None,
        dense_batch=db,
        dense_time_s=dt,
        link=link,
        allreduce=allreduce,
    )


# ---- per-device operator model ------------------------------------------------------------------


def _require(device: DeviceSpec, fields: Iterable[str], what: str) -> None:
    missing = [f for f in fields if getattr(device, f) is None]
    if missing:
        raise UserInputError(
            f"device {device.name} has no {', '.join(missing)} in the catalog; cannot model {what} "
            "(add it to a catalog file or give a measured profile)"
        )


@dataclass(frozen=True)
class DeviceModel:
    """Operator times on one device type: from `profile` when given, else the roofline of `device`.

    A profile whose device differs from `device` is applied by datasheet ratios (source `derived`).
    `device` may be None only with a profile of a device that has no catalog entry (e.g. "cpu").
    """

    device: DeviceSpec | None
    profile: Profile | None = None

    def __post_init__(self) -> None:
        if self.device is None and self.profile is None:
            raise ValueError("DeviceModel needs a device spec, a profile, or both")

    @property
    def name(self) -> str:
        return self.device.name if self.device is not None else self.profile.device

    @property
    def profile_name(self) -> str:
        return self.profile.name if self.profile is not None else ROOFLINE

    @property
    def derived(self) -> bool:
        return (
            self.profile is not None and self.device is not None and self.profile.device != self.device.name
        )

    @cached_property
    def fits(self) -> _ProfileFits | None:
        return _fit_profile(self.profile) if self.profile is not None else None

    @cached_property
    def _scale(self) -> tuple[float, float]:
        """(bandwidth, flops) multipliers of time terms when a profile is applied to another device."""
        if not self.derived:
            return 1.0, 1.0
        try:
            src = get_device(self.profile.device)
        except UserInputError:
            raise UserInputError(
                f"cannot derive {self.device.name} from profile {self.profile.name}: "
                f"{self.profile.device} is not in the device catalog"
            ) from None
        for dev in (src, self.device):
            _require(dev, ("mem_bandwidth_bytes_per_s", "bf16_flops_per_s"), "a derived profile")
        return (
            src.mem_bandwidth_bytes_per_s / self.device.mem_bandwidth_bytes_per_s,
            src.bf16_flops_per_s / self.device.bf16_flops_per_s,
        )

    def _source(self, same_shape: bool) -> str:
        if self.profile is None:
            return "modeled"
        if self.derived:
            return "derived"
        return "measured" if same_shape else "modeled"

    def _roofline(self, nbytes, flops, bw_eff: float, flops_eff: float, overhead_s: float):
        dev = self.device
        _require(dev, ("mem_bandwidth_bytes_per_s", "bf16_flops_per_s"), "operator times")
        t_mem = nbytes / (dev.mem_bandwidth_bytes_per_s * bw_eff)
        t_flops = flops / (dev.bf16_flops_per_s * flops_eff)
        return overhead_s + np.maximum(t_mem, t_flops)

    def _check_dtype(self, dtype: str) -> None:
        if self.profile is None and dtype not in ("fp16", "bf16"):
            raise UserInputError(
                f"the roofline models fp16/bf16 only (datasheet bf16 peak); got dtype {dtype!r}"
            )

    def dense_layer(self, spec: ModelSpec, dtype: str, batch, tp: int = 1) -> OpTime:
        """One decoder layer's dense part for `batch` tokens on one device of a `tp`-way replica."""
        self._check_dtype(dtype)
        batch = np.asarray(batch, dtype=float)
        nbytes = dense_layer_bytes(spec, dtype, batch, tp)
        flops = dense_layer_flops(spec, batch, tp)
        if self.profile is None:
            t = self._roofline(
                nbytes, flops, WEIGHT_BW_EFFICIENCY, DENSE_FLOPS_EFFICIENCY, DENSE_LAYER_OVERHEAD_S
            )
            return OpTime(t, "modeled", ROOFLINE)
        p, f = self.profile, self.fits
        same = same_layer_shape(spec, p.model) and dtype == p.dtype and tp == p.tp
        if same and not self.derived:
            t = _interp_extrap(batch, f.dense_batch, f.dense_time_s)
        else:
            bw_s, fl_s = self._scale
            t = f.dense[0] * bw_s * nbytes + f.dense[1] * fl_s * flops
        return OpTime(t, self._source(same), p.name)

    def head(self, spec: ModelSpec, dtype: str, batch, tp: int = 1) -> OpTime:
        """Final norm + LM head for `batch` tokens on one device of a `tp`-way replica."""
        self._check_dtype(dtype)
        batch = np.asarray(batch, dtype=float)
        nbytes, flops = head_bytes(spec, dtype, batch, tp), head_flops(spec, batch, tp)
        if self.profile is None:
            t = self._roofline(
                nbytes, flops, WEIGHT_BW_EFFICIENCY, DENSE_FLOPS_EFFICIENCY, DENSE_LAYER_OVERHEAD_S
            )
            return OpTime(t, "modeled", ROOFLINE)
        p, f = self.profile, self.fits
        same = (
            f.head_batch is not None
            and (spec.vocab_size, spec.hidden_size) == (p.model.vocab_size, p.model.hidden_size)
            and dtype == p.dtype
            and tp == p.tp
        )
        if same and not self.derived:
            t = _interp_extrap(batch, f.head_batch, f.head_time_s)
        else:  # the dense fit's bandwidth and flops rates applied to the head's bytes and flops
            bw_s, fl_s = self._scale
            t = f.dense[0] * bw_s * nbytes + f.dense[1] * fl_s * flops
        return OpTime(t, self._source(same), p.name)

    def attention_layer(
        self, spec: ModelSpec, dtype: str, batch, sum_context, kv_fraction: float = 1.0
    ) -> OpTime:
        """One layer's decode attention on a device holding `kv_fraction` of every sequence's KV."""
        self._check_dtype(dtype)
        batch = np.asarray(batch, dtype=float)
        nbytes = attention_layer_bytes(spec, dtype, batch, sum_context, kv_fraction)
        if self.profile is None:
            flops = attention_layer_flops(spec, sum_context, kv_fraction)
            t = self._roofline(
                nbytes, flops, ATTENTION_BW_EFFICIENCY, ATTENTION_FLOPS_EFFICIENCY, ATTENTION_LAYER_OVERHEAD_S
            )
            return OpTime(t, "modeled", ROOFLINE)
        p, f = self.profile, self.fits
        bw_s, _ = self._scale
        t = f.attention[0] + f.attention[1] * batch + f.attention[2] * bw_s * nbytes
        same = same_layer_shape(spec, p.model) and dtype == p.dtype
        return OpTime(t, self._source(same), p.name)

    def allreduce(self, nbytes, world_size: int) -> OpTime:
        """Ring all-reduce of `nbytes` over `world_size` devices of this type (0 when world_size is 1)."""
        nbytes = np.asarray(nbytes, dtype=float)
        if world_size <= 1:
            return OpTime(np.zeros_like(nbytes), "modeled", self.profile_name)
        steps = 2.0 * (world_size - 1)
        per_link = ring_allreduce_bytes_per_link(nbytes, world_size)
        f = self.fits
        if f is not None and f.allreduce is not None and not self.derived:
            return OpTime(
                f.allreduce[0] * steps + f.allreduce[1] * per_link, "modeled", self.profile_name
            )  # a fit
        if f is not None and f.link is not None and not self.derived:  # ring over the measured p2p link
            return OpTime(f.link[0] * steps + f.link[1] * per_link, "modeled", self.profile_name)
        if self.device is None:
            raise UserInputError(
                f"profile {self.profile_name} has no allreduce or link points; cannot model TP"
            )
        _require(self.device, ("intra_link_bytes_per_s",), f"a {world_size}-way tensor-parallel all-reduce")
        bw = self.device.intra_link_bytes_per_s * INTRA_LINK_EFFICIENCY
        return OpTime(INTRA_LINK_STEP_LATENCY_S * steps + per_link / bw, "modeled", ROOFLINE)

    def nic(self) -> tuple[float, float, str]:
        """(latency_s, bandwidth_bytes_per_s, source) of this device's link to the other pool."""
        f = self.fits
        if f is not None and f.link is not None and not self.derived and f.link[1] > 0:
            return float(f.link[0]), float(1.0 / f.link[1]), "modeled"  # fitted to measured link points
        if self.device is None or self.device.nic_gbps is None:
            raise UserInputError(f"device {self.name} has no nic_gbps in the catalog; cannot model the link")
        return NIC_LATENCY_S, self.device.nic_gbps * 1e9 / 8.0 * NIC_EFFICIENCY, "modeled"

    @property
    def iteration_overhead_s(self) -> float:
        return self.profile.iteration_overhead_s if self.profile is not None and not self.derived else 0.0


def device_model(
    device: DeviceSpec,
    backend: str = "cuda",
    profile_dir: str | Path | None = None,
    derive_from: Profile | None = None,
) -> DeviceModel:
    """The model of `device`: its own profile if one is stored, else `derive_from` (derived), else roofline."""
    own = find_profile(device.name, backend, profile_dir)
    return DeviceModel(device, own if own is not None else derive_from)
