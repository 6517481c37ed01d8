"""Merging runs: the union of the points of several runs, e.g. the shards of one sweep."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from lamina_bench.errors import UserInputError
from lamina_bench.results.files import atomic_write_json
from lamina_bench.results.paths import check_output_folder
from lamina_bench.results.row import PointRow
from lamina_bench.results.store import RunStore, check_run_id
from lamina_bench.results.table import flat

# Fields that may differ between two stores of the same point without it being a conflict.
_VOLATILE = ("run_id", "wall_s", "timestamp", "repro_command")


def _comparable(row: PointRow) -> dict[str, Any]:
    return {k: v for k, v in flat(row).items() if k not in _VOLATILE}  # flat: a conflict names the metric


def merge_runs(paths: Sequence[str | Path], out: str | Path, argv: Sequence[str] | None = None) -> RunStore:
    """Union of the points (and telemetry, requests) of several runs, e.g. the shards of one sweep.

    A point_id present in several runs must agree on every column except run_id, wall_s, timestamp and
    repro_command, else UserInputError. Rows keep the run_id of the run that produced them.

    Every input is read and checked before anything is written; the merged run is built in a hidden
    folder beside `out` and renamed to `out` when complete, so a failure or a kill leaves no `out`.
    """
    if not paths:
        raise UserInputError("merge_runs: give at least one run folder")
    out = check_output_folder(out, "--out")
    check_run_id(out.name, f"--out {out}: the merged run's folder name")
    if out.exists():
        raise UserInputError(f"--out {out} already exists; the merged run needs a new folder")
    stores = [RunStore.open(p) for p in paths]
    merged: dict[str, PointRow] = {}
    origin: dict[str, Path] = {}
    for store in stores:
        for row in store.rows():
            pid = row.point_id
            if pid in merged and _comparable(merged[pid]) != _comparable(row):
                before, now = _comparable(merged[pid]), _comparable(row)
                differs = [k for k in {**before, **now} if before.get(k) != now.get(k)]
                raise UserInputError(
                    f"point {pid} differs between {origin[pid]} and {store.path} in {', '.join(differs)}"
                )
            merged.setdefault(pid, row)
            origin.setdefault(pid, store.path)
    tables: dict[str, list[pd.DataFrame]] = {kind: [] for kind in _TABLES}
    for store in stores:
        for kind in _TABLES:
            table = store._table(kind)  # UserInputError naming an unreadable part
            if table is not None:  # telemetry without its columns would break the merged run's readers
                tables[kind].append(store._checked_telemetry(table) if kind == "telemetry" else table)
    specs = [s.manifest.get("spec") for s in stores]
    spec = specs[0] if all(s == specs[0] for s in specs) else specs
    devices = [s.manifest.get("devices") for s in stores]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.merge-{secrets.token_hex(4)}"
    try:
        target = RunStore._create_at(staging, out.name, spec, argv, devices)
        target.manifest["merged_from"] = [{"path": str(s.path), **_merge_source(s.manifest)} for s in stores]
        for row in merged.values():
            atomic_write_json(target.path / "points" / f"{row.point_id}.json", row.to_record())
        for kind, parts in tables.items():
            if parts:
                target._add_part(kind, pd.concat(parts, ignore_index=True))
        target.finalize()
        os.rename(staging, out)  # atomic; fails if `out` appeared meanwhile (then nothing is replaced)
    except OSError as exc:
        raise UserInputError(f"cannot write the merged run to {out}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return RunStore.open(out)


_TABLES = ("telemetry", "requests")


def _merge_source(manifest: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("run_id", "status", "start_time", "end_time", "git", "command_line", "host")
    return {k: manifest.get(k) for k in keys}
