"""Sweep specs: TOML -> validated points -> measured or modeled execution, resumable and shardable.

A spec holds `[[measured]]` blocks (run the reference implementation on the local device) and
`[[modeled]]` blocks (performance model + trace simulator). Every list-valued knob of a block is
expanded as a product; each combination is one point, identified by `point_id` (a hash of its
configuration, so resume, shard and compare match points across runs). Example:

    name = "example"
    repeats = 3                       # measured repeats per point -> median and CI (results.median_ci95)

    [[measured]]
    model = "bench-llama-gqa"         # a bench model (random weights, built here) or a HF folder
    systems = ["homogeneous", "lamina"]
    batch_sizes = [1, 4, 16]
    context_lens = [128]              # prompt tokens per request
    new_tokens = 16                   # decode steps measured per request
    pipeline_batches = [1, 2]         # lamina only: 1 = no overlap, 2 = ping-pong
    predict = true                    # also model each point from the local profile (model error)

    [[modeled]]
    models = ["llama-33b"]
    traces = ["azure-conv"]
    systems = ["homogeneous", "lamina"]
    homogeneous = ["2xH100"]          # mixes for the baseline
    lamina = [{ compute = "1xH100", attention = "2xH20", pipeline_batches = 2 }]

Unknown keys, unknown names and impossible mixes fail before any work with a one-line error.
"""

from __future__ import annotations

import itertools
import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamina_bench.catalog.benchmodels import local_model_spec, resolve_local_model
from lamina_bench.catalog.devices import parse_mix
from lamina_bench.catalog.models import get_model
from lamina_bench.catalog.workloads import TRACES, load_trace
from lamina_bench.errors import UserInputError
from lamina_bench.measure.run import MeasuredConfig
from lamina_bench.model.simulator import ARRIVALS
from lamina_bench.model.system import SYSTEMS, memory_plan
from lamina_bench.results.store import check_run_id
from lamina_bench.sweep.points import ModeledConfig, Point
from reference_impl.errors import ConfigError
from reference_impl.lamina import Layout

# key -> (type, default); list-valued keys are expanded. A key given as a scalar is a one-element list.
_MEASURED_KEYS: dict[str, tuple[type, Any]] = {
    "model": (str, None),
    "systems": (list, ["homogeneous", "lamina"]),
    "batch_sizes": (list, [1, 4]),
    "context_lens": (list, [64]),
    "new_tokens": (int, 16),
    "device": (str, "cpu"),
    "dtype": (str, "fp32"),
    "tp": (int, 1),
    "compute_workers": (int, 1),
    "attention_workers": (int, 1),
    "pipeline_batches": (list, [1]),
    "predict": (bool, True),
}
_MODELED_KEYS: dict[str, tuple[type, Any]] = {
    "models": (list, None),
    "traces": (list, ["azure-conv"]),
    "systems": (list, ["homogeneous", "lamina"]),
    "homogeneous": (list, []),
    "lamina": (list, []),
    "requests": (int, 0),  # 0 = the whole trace
    "arrival": (str, "saturate"),
    "rate_per_s": (float, 0.0),
    "dtype": (str, "fp16"),
}
_LAMINA_MIX_KEYS = ("compute", "attention", "pipeline_batches")
_TOP_KEYS = ("name", "repeats", "measured", "modeled")


@dataclass(frozen=True)
class SweepSpec:
    name: str
    repeats: int
    points: tuple[Point, ...]
    raw: Mapping[str, Any]  # the parsed TOML, stored in the manifest


def load_spec(path: str | Path) -> SweepSpec:
    if str(path) == "":
        raise UserInputError("the sweep spec path is empty; give a TOML file")
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"sweep spec {path} is a folder; give a TOML file")
    if not path.is_file():
        raise UserInputError(f"sweep spec {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"sweep spec {path} cannot be read as UTF-8 text ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserInputError(f"sweep spec {path}: not valid TOML ({exc})") from None
    return parse_spec(raw, origin=str(path))


def parse_spec(raw: Mapping[str, Any], origin: str = "spec") -> SweepSpec:
    _check_keys(raw, _TOP_KEYS, origin)
    repeats = raw.get("repeats", 1)
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise UserInputError(f"{origin}: repeats must be a positive integer, got {repeats!r}")
    points: list[Point] = []
    for i, block in enumerate(_blocks(raw, "measured", origin)):
        points += _measured_points(_with_defaults(block, _MEASURED_KEYS, f"{origin}: [[measured]] #{i + 1}"))
    for i, block in enumerate(_blocks(raw, "modeled", origin)):
        points += _modeled_points(_with_defaults(block, _MODELED_KEYS, f"{origin}: [[modeled]] #{i + 1}"))
    if not points:
        raise UserInputError(f"{origin}: no points; add a [[measured]] or [[modeled]] block")
    seen: dict[str, Point] = {}
    for p in points:
        seen.setdefault(p.point_id, p)  # the same point listed twice runs once
    name = raw.get("name", "sweep")
    check_run_id(name, f"{origin}: name (it starts the run folder's name)")
    return SweepSpec(name=name, repeats=repeats, points=tuple(seen.values()), raw=raw)


# ---- expansion ------------------------------------------------------------------------------------


def _blocks(raw: Mapping[str, Any], key: str, origin: str) -> list[Mapping[str, Any]]:
    blocks = raw.get(key, [])
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise UserInputError(f"{origin}: '{key}' must be an array of tables ([[{key}]])")
    return blocks


def _check_keys(table: Mapping[str, Any], valid: Iterable[str], where: str) -> None:
    valid = tuple(valid)
    for key in table:
        if key not in valid:
            raise UserInputError(f"{where}: unknown key '{key}'; valid: {', '.join(valid)}")


def _with_defaults(block: Mapping[str, Any], schema: Mapping[str, tuple[type, Any]], where: str) -> dict:
    _check_keys(block, schema, where)
    out: dict[str, Any] = {"_where": where}
    for key, (kind, default) in schema.items():
        value = block.get(key, default)
        if value is None:
            raise UserInputError(f"{where}: '{key}' is required")
        if kind is list and not isinstance(value, list):
            value = [value]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise UserInputError(f"{where}: '{key}' must be {kind.__name__}, got {value!r}")
        if kind is float and not math.isfinite(value):
            raise UserInputError(f"{where}: '{key}' must be a finite number, got {value!r}")
        if kind is list and not value and key not in ("homogeneous", "lamina"):
            raise UserInputError(f"{where}: '{key}' must not be empty")
        out[key] = value
    return out


def _check_systems(systems: list, where: str) -> None:
    for s in systems:
        if s not in SYSTEMS:
            raise UserInputError(f"{where}: unknown system {s!r}; valid: {', '.join(SYSTEMS)}")


def _positive_ints(values: list, key: str, where: str) -> None:
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise UserInputError(f"{where}: '{key}' entries must be positive integers, got {v!r}")


def _measured_points(b: dict) -> list[Point]:
    where = b["_where"]
    _check_systems(b["systems"], where)
    for key in ("batch_sizes", "context_lens", "pipeline_batches"):
        _positive_ints(b[key], key, where)
    for key in ("new_tokens", "tp", "compute_workers", "attention_workers"):
        _positive_ints([b[key]], key, where)
    if b["new_tokens"] < 2:
        raise UserInputError(
            f"{where}: new_tokens must be >= 2 (the first comes from the prefill; decode is measured)"
        )
    if b["device"] not in ("cpu", "cuda"):
        raise UserInputError(f"{where}: device must be cpu or cuda, got {b['device']!r}")
    if b["dtype"] not in ("fp32", "fp16", "bf16"):
        raise UserInputError(f"{where}: dtype must be fp32, fp16 or bf16, got {b['dtype']!r}")
    model = resolve_local_model(b["model"], where)
    max_position = local_model_spec(model).max_position
    longest = max(b["context_lens"]) + b["new_tokens"]
    if longest > max_position:
        raise UserInputError(
            f"{where}: context_lens up to {max(b['context_lens'])} + new_tokens {b['new_tokens']} = {longest} "
            f"tokens exceed the {max_position} positions of {b['model']}"
        )
    points = []
    for system, batch, ctx in itertools.product(b["systems"], b["batch_sizes"], b["context_lens"]):
        for depth in b["pipeline_batches"] if system == "lamina" else [1]:
            if system == "lamina":
                _check_lamina_layout(b["compute_workers"], b["attention_workers"], depth, where)
            config = MeasuredConfig(
                model=model,
                system=system,
                device=b["device"],
                dtype=b["dtype"],
                batch_size=batch,
                context_len=ctx,
                new_tokens=b["new_tokens"],
                tp=b["tp"],
                compute_workers=b["compute_workers"],
                attention_workers=b["attention_workers"],
                pipeline_batches=depth,
            )
            points.append(Point("measured", config))
            if b["predict"]:
                points.append(Point("prediction", config))
    return points


def _check_lamina_layout(compute: int, attention: int, depth: int, where: str) -> None:
    """The runtime's own rule for worker counts and pipeline depth, checked before any work."""
    try:
        Layout(compute, attention, depth)
    except ConfigError as exc:
        raise UserInputError(f"{where}: {exc}") from None


def _modeled_points(b: dict) -> list[Point]:
    where = b["_where"]
    _check_systems(b["systems"], where)
    for m in b["models"]:
        get_model(m)  # UserInputError naming the valid models
    for t in b["traces"]:
        if t not in TRACES:
            raise UserInputError(f"{where}: unknown trace {t!r}; valid: {', '.join(TRACES)}")
    if b["arrival"] not in ARRIVALS:
        raise UserInputError(f"{where}: unknown arrival {b['arrival']!r}; valid: {', '.join(ARRIVALS)}")
    if b["arrival"] == "poisson" and b["rate_per_s"] <= 0:
        raise UserInputError(f"{where}: arrival = 'poisson' needs rate_per_s > 0")
    if b["requests"] < 0:
        raise UserInputError(f"{where}: requests must be >= 0 (0 = the whole trace), got {b['requests']}")
    for t in b["traces"]:
        available = len(load_trace(t))
        if b["requests"] > available:
            raise UserInputError(
                f"{where}: requests = {b['requests']} but trace {t} has {available}; "
                f"give at most {available}, or 0 for the whole trace"
            )
    mixes = []
    if "homogeneous" in b["systems"]:
        if not b["homogeneous"]:
            raise UserInputError(
                f"{where}: system 'homogeneous' needs a 'homogeneous' list of mixes, e.g. [\"4xH100\"]"
            )
        mixes += [("homogeneous", str(parse_mix(m)), "", 1) for m in b["homogeneous"]]
    if "lamina" in b["systems"]:
        if not b["lamina"]:
            raise UserInputError(
                f"{where}: system 'lamina' needs a 'lamina' list like [{{compute = \"1xH100\", attention = \"2xH20\"}}]"
            )
        for mix in b["lamina"]:
            if not isinstance(mix, dict):
                raise UserInputError(f"{where}: 'lamina' entries must be tables, got {mix!r}")
            _check_keys(mix, _LAMINA_MIX_KEYS, f"{where}: lamina mix")
            if "compute" not in mix or "attention" not in mix:
                raise UserInputError(f"{where}: a lamina mix needs 'compute' and 'attention', got {mix!r}")
            depth = mix.get("pipeline_batches", 2)
            _positive_ints([depth], "pipeline_batches", where)
            mixes.append(("lamina", str(parse_mix(mix["compute"])), str(parse_mix(mix["attention"])), depth))
    points = []
    for model, trace, (system, compute, attention, depth) in itertools.product(
        b["models"], b["traces"], mixes
    ):
        config = ModeledConfig(
            model=model,
            system=system,
            trace=trace,
            compute=compute,
            attention=attention or None,
            pipeline_batches=depth,
            requests=b["requests"],
            arrival=b["arrival"],
            rate_per_s=b["rate_per_s"],
            dtype=b["dtype"],
        )
        memory_plan(config.system_config())  # weights that do not fit: UserInputError before any work
        points.append(Point("modeled", config))
    return points


DEFAULT_SPEC = Path(__file__).resolve().parents[1] / "data" / "default_sweep.toml"
QUICK_SPEC = Path(__file__).resolve().parents[1] / "data" / "quick_sweep.toml"
