"""Measured operator profiles of one device: the file format, its dataclasses, reader and writer.

Profile file format (``"format": "lamina-bench-profile/1"``; JSON, one object; `write_profile` /
`load_profile` are the only writer and reader, and the profiler (`measure/profile.py`) writes through them)::

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
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from lamina_bench.catalog.models import DTYPE_BYTES, ModelSpec
from lamina_bench.catalog.moe import require_dense
from lamina_bench.errors import UserInputError
from lamina_bench.results.files import atomic_write_json

PROFILE_FORMAT = "lamina-bench-profile/1"
DEFAULT_PROFILE_DIR = Path(__file__).resolve().parents[2] / "results" / "profiles"


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
        require_dense(self.model, "profiles")
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
    if not isinstance(data, dict):
        raise UserInputError(f"profile: a profile is a JSON object, got {type(data).__name__}")
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
    except UserInputError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise UserInputError(f"profile: malformed ({type(exc).__name__}: {exc})") from None


def write_profile(profile: Profile, path: str | Path) -> Path:
    """Write `profile` as JSON, atomically; the profiler calls this and nothing else."""
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
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserInputError(f"profile {path} is not valid JSON: {' '.join(str(exc).split())}") from None
    try:
        return profile_from_dict(data)
    except UserInputError as exc:
        raise UserInputError(f"{path}: {exc}") from None


def find_profile(device: str, backend: str = "cuda", profile_dir: str | Path | None = None) -> Profile | None:
    """The profile `<profile_dir>/<device>-<backend>.json`, or None when there is none."""
    path = Path(profile_dir or DEFAULT_PROFILE_DIR) / f"{device}-{backend}.json"
    return load_profile(path) if path.is_file() else None
