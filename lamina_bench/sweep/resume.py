"""Resuming and splitting sweeps: the manifest record a run is recognised by, and shards of the points."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lamina_bench.errors import UserInputError
from lamina_bench.sweep.spec import Point, SweepSpec


def shard(points: Iterable[Point], index: int, count: int) -> list[Point]:
    """Points of shard `index` (1-based) of `count`: round robin in spec order, so shards are balanced."""
    if count < 1 or not 1 <= index <= count:
        raise UserInputError(f"--shard must be I/N with 1 <= I <= N, got {index}/{count}")
    return [p for i, p in enumerate(points) if i % count == index - 1]


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserInputError(f"--shard must look like I/N (e.g. 1/2), got {text!r}") from None
    shard([], index, count)  # validates
    return index, count


def manifest_spec(
    spec: SweepSpec, spec_path: str, shard_text: str | None, point: str | None = None
) -> dict[str, Any]:
    """What the manifest records of the sweep; `--resume` looks for a run with the same record."""
    return {"path": spec_path, "shard": shard_text, "point": point, "repeats": spec.repeats, "toml": spec.raw}


def find_resumable(out_root: Path, record: dict[str, Any]) -> Path | None:
    """The newest run folder under `out_root` made by the same spec and shard and not finished."""
    candidates = []
    for manifest in out_root.glob("*/manifest.json"):
        try:
            data = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if (
            data.get("spec") == json.loads(json.dumps(record, default=str))
            and data.get("status") != "finished"
        ):
            candidates.append((data.get("start_time") or "", manifest.parent))
    return max(candidates)[1] if candidates else None
