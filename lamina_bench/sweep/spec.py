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
    prefill_workers = [0, 1]          # lamina only: processes that only prefill (0 = the compute worker does)
    predict = true                    # also model each point from the local profile (model error)

    [[modeled]]
    models = ["llama-33b"]
    traces = ["azure-conv"]
    systems = ["homogeneous", "lamina"]
    homogeneous = ["2xH100"]          # mixes for the baseline
    lamina = [{ compute = "1xH100", attention = "2xH20", pipeline_batches = 2 }]

Lamina-only knobs (`pipeline_batches`, `prefill_workers`) are expanded for the lamina system; the
homogeneous points of the same block run one batch in flight and prefill on the processes that decode.
A measured point records the decode TBT figures (prefill excluded) and each request's ttft, tpot, itl
and e2el (prefill included; measure/run.py). Unknown keys, unknown names, impossible mixes and prefill
workers asked of homogeneous systems only fail before any work with a one-line error.
"""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamina_bench.catalog.benchmodels import local_model_spec, resolve_local_model
from lamina_bench.errors import UserInputError
from lamina_bench.measure.config import MeasuredConfig
from lamina_bench.results.store import check_run_id
from lamina_bench.sweep.blocks import check_keys, check_systems, positive_ints, with_defaults
from lamina_bench.sweep.modeled import modeled_block, modeled_points
from lamina_bench.sweep.points import Point

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
    "prefill_workers": (list, [0]),
    "predict": (bool, True),
}
_TOP_KEYS = ("name", "repeats", "measured", "modeled")


@dataclass(frozen=True)
class SweepSpec:
    name: str
    repeats: int
    points: tuple[Point, ...]
    raw: Mapping[str, Any]  # the parsed TOML, stored in the manifest
    skipped: int = 0  # grid combinations of [[modeled]] blocks that cannot run (weights do not fit, ...)


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
    check_keys(raw, _TOP_KEYS, origin)
    repeats = raw.get("repeats", 1)
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise UserInputError(f"{origin}: repeats must be a positive integer, got {repeats!r}")
    points: list[Point] = []
    skipped = 0
    for i, block in enumerate(_blocks(raw, "measured", origin)):
        points += _measured_points(with_defaults(block, _MEASURED_KEYS, f"{origin}: [[measured]] #{i + 1}"))
    for i, block in enumerate(_blocks(raw, "modeled", origin)):
        where = f"{origin}: [[modeled]] #{i + 1}"
        block_points, block_skipped = modeled_points(modeled_block(block, where))
        points += block_points
        skipped += block_skipped
    if not points:
        raise UserInputError(f"{origin}: no points; add a [[measured]] or [[modeled]] block")
    seen: dict[str, Point] = {}
    for p in points:
        seen.setdefault(p.point_id, p)  # the same point listed twice runs once
    name = raw.get("name", "sweep")
    check_run_id(name, f"{origin}: name (it starts the run folder's name)")
    return SweepSpec(name=name, repeats=repeats, points=tuple(seen.values()), raw=raw, skipped=skipped)


# ---- expansion ------------------------------------------------------------------------------------


def _blocks(raw: Mapping[str, Any], key: str, origin: str) -> list[Mapping[str, Any]]:
    blocks = raw.get(key, [])
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise UserInputError(f"{origin}: '{key}' must be an array of tables ([[{key}]])")
    return blocks


def _measured_points(b: dict) -> list[Point]:
    where = b["_where"]
    check_systems(b["systems"], where, measured=True)
    for key in ("batch_sizes", "context_lens", "pipeline_batches"):
        positive_ints(b[key], key, where)
    for key in ("new_tokens", "tp", "compute_workers", "attention_workers"):
        positive_ints([b[key]], key, where)
    positive_ints(b["prefill_workers"], "prefill_workers", where, zero_ok=True)
    if any(b["prefill_workers"]) and "lamina" not in b["systems"]:
        raise UserInputError(
            f"{where}: prefill_workers {b['prefill_workers']} apply to the lamina system only (the homogeneous "
            "engine prefills on its own processes); add 'lamina' to systems or leave prefill_workers out"
        )
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
        lamina_knobs = itertools.product(b["pipeline_batches"], b["prefill_workers"])
        for depth, prefill in lamina_knobs if system == "lamina" else [(1, 0)]:
            if system == "lamina":
                _check_lamina_layout(b["compute_workers"], b["attention_workers"], depth, prefill, where)
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
                prefill_workers=prefill,
            )
            points.append(Point("measured", config))
            if b["predict"]:
                points.append(Point("prediction", config))
    return points


def _check_lamina_layout(compute: int, attention: int, depth: int, prefill: int, where: str) -> None:
    """The runtime's own rule for worker counts, pipeline depth and prefill workers, checked before any work
    (imported here: the runtime's package imports torch, which modeled-only sweeps never need)."""
    from reference_impl.errors import ConfigError
    from reference_impl.lamina.layout import Layout

    try:
        Layout(compute, attention, depth, prefill)
    except ConfigError as exc:
        raise UserInputError(f"{where}: {exc}") from None


DEFAULT_SPEC = Path(__file__).resolve().parents[1] / "data" / "default_sweep.toml"
QUICK_SPEC = Path(__file__).resolve().parents[1] / "data" / "quick_sweep.toml"
