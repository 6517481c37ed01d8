"""Which points run and where: shards, one point, and the run folder (resumed or new) a sweep writes."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from lamina_bench.errors import UserInputError
from lamina_bench.results.paths import check_output_folder
from lamina_bench.results.store import RunStore, check_run_id
from lamina_bench.sweep.points import Point
from lamina_bench.sweep.spec import SweepSpec


def shard(points: Iterable[Point], index: int, count: int) -> list[Point]:
    """Points of shard `index` (1-based) of `count`: round robin in spec order, so shards are balanced."""
    if count < 1 or not 1 <= index <= count:
        raise UserInputError(f"--shard must be I/N with 1 <= I <= N, got {index}/{count}")
    return [p for i, p in enumerate(points) if i % count == index - 1]


_SHARD_RE = re.compile(r"^(\d{1,9})/(\d{1,9})$")


def parse_shard(text: str) -> tuple[int, int]:
    match = _SHARD_RE.match(text)
    if match is None:
        raise UserInputError(f"--shard must look like I/N with 1 <= I <= N (e.g. 1/2), got {text!r}")
    index, count = int(match.group(1)), int(match.group(2))
    shard([], index, count)  # validates
    return index, count


def manifest_spec(
    spec: SweepSpec, spec_path: str, shard_text: str | None, point: str | None = None
) -> dict[str, Any]:
    """What the manifest records of the sweep; `--resume` looks for a run with the same record."""
    return {"path": spec_path, "shard": shard_text, "point": point, "repeats": spec.repeats, "toml": spec.raw}


def _resumable_since(manifest: Path, record: dict[str, Any]) -> str | None:
    """The start time of the run whose manifest this is, when it was made by the same spec and shard and
    did not finish; None otherwise (also for a manifest that cannot be read: not a run to resume)."""
    try:
        data = json.loads(manifest.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("status") == "finished":
        return None
    if data.get("spec") != json.loads(json.dumps(record, default=str)):
        return None
    return str(data.get("start_time") or "")


def find_resumable(out_root: Path, record: dict[str, Any]) -> Path | None:
    """The newest run folder under `out_root` made by the same spec and shard and not finished."""
    candidates = []
    for manifest in out_root.glob("*/manifest.json"):
        since = _resumable_since(manifest, record)
        if since is not None:
            candidates.append((since, manifest.parent))
    return max(candidates)[1] if candidates else None


def select_points(spec: SweepSpec, spec_path: str, shard_text: str | None, point: str | None) -> list[Point]:
    """The points one invocation runs: all of the spec, one shard of them, or the one point asked for."""
    points = list(spec.points)
    if shard_text is not None:
        points = shard(points, *parse_shard(shard_text))
    if point is not None:
        points = [p for p in points if p.point_id == point]
        if not points:
            raise UserInputError(f"no point {point!r} in {spec_path}; ids are in each row's repro_command")
    return points


def open_run(
    spec: SweepSpec,
    record: dict[str, Any],
    out_root: Path,
    resume: bool,
    run_id: str | None,
    argv: Sequence[str],
    log: Callable[[str], None],
) -> RunStore:
    """The run folder to write, locked for this process (RunStore.lock): when resuming, the run `run_id`
    if given, else the newest unfinished run of the same record; else (or when there is none) a new run
    named `run_id` (default <spec name>-<UTC time>[-shardIofN])."""
    check_output_folder(out_root, "--out")
    found = None
    if resume and run_id is not None and (out_root / check_run_id(run_id)).exists():
        found = out_root / run_id  # --resume --run-id X continues X itself, never another run
        if _resumable_since(found / "manifest.json", record) is None:
            raise UserInputError(
                f"--resume --run-id {run_id}: {found} is finished, not a run folder, or made by another "
                "spec, shard or point; give another --run-id, or leave --run-id out to resume the newest"
            )
    elif resume:
        found = find_resumable(out_root, record)
    if resume and found is None:
        log(f"nothing to resume under {out_root} for this spec; starting a new run")
    if found is not None:
        store = RunStore.open(found).lock()  # UserInputError while another process writes it
        log(f"resuming {found}")
        return store
    shard_text = record.get("shard")
    shard_tag = f"-shard{shard_text.replace('/', 'of')}" if shard_text else ""
    if run_id is None:
        run_id = f"{spec.name}-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}{shard_tag}"
    return RunStore.create(out_root, run_id=run_id, spec=record, argv=argv).lock()
