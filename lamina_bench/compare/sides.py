"""The two sides of a comparison: run folders (points) or pytest-benchmark JSON files, as entries."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamina_bench.errors import UserInputError
from lamina_bench.results.row import PointRow
from lamina_bench.results.store import RunStore

BENCH_METRIC = "median_s"


@dataclass(frozen=True)
class Entry:
    """One comparable row: a run point (key = point_id) or a benchmark (key = pytest node id)."""

    key: str
    label: str
    source: str
    status: str  # ok | failed
    error: str | None = None
    values: Mapping[str, float] = field(default_factory=dict)  # finite metrics only
    intervals: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # 95% CI or IQR
    profile: str | None = None
    # True when the numbers rest on timings taken in the run: measured rows, benchmarks, and modeled
    # predictions of measured points (rows with `predicts`), calibrated from a profile taken in the run.
    timed: bool = True


@dataclass(frozen=True)
class Side:
    kind: str  # "run" | "benchmark"
    path: str
    description: str  # run id, commit, time: one line for the report header
    entries: Mapping[str, Entry]
    notes: tuple[str, ...] = ()
    machine: str | None = None  # benchmark files: the machine they ran on


def load_side(path: str | Path) -> Side:
    """A run folder / baseline folder or a pytest-benchmark JSON file; UserInputError for anything else."""
    path = Path(path)
    if path.is_dir():
        return _load_run(RunStore.open(path))  # UserInputError when it has no manifest.json
    if path.is_file():
        return _load_benchmarks(path)
    raise UserInputError(f"{path} does not exist; give a run folder or a pytest-benchmark JSON file")


def point_label(row: PointRow) -> str:
    """Human label of a row: model system mix trace knobs (source)."""
    if row.system == "afd":  # the expert pool is held as the compute mix
        mix = f"{row.attention or '?'} attn + {row.compute or '?'} experts"
    else:
        mix = (row.compute or "") + (f"+{row.attention}" if row.attention else "")
    knobs = [row.model, row.system, mix, row.trace]
    for value, short in ((row.batch_size, "B"), (row.context_len, "ctx"), (row.repeat, "r")):
        if value is not None:
            knobs.append(f"{short}={value}")
    if row.system in ("lamina", "afd") and row.pipeline_batches is not None:
        knobs.append(f"{'m' if row.system == 'afd' else 'n'}={row.pipeline_batches}")
    for key, short in (("prefill_workers", "pw"), ("max_batch", "cap")):  # optional knobs, when set
        if row.settings.get(key):
            knobs.append(f"{short}={row.settings[key]}")
    return " ".join(str(k) for k in knobs if k) + f" ({row.source})"


def _timed(row: PointRow) -> bool:
    """Numbers resting on timings taken in the run: measured rows and predictions of measured points."""
    return row.source not in ("modeled", "derived") or row.predicts is not None


def _row_entry(row: PointRow) -> Entry:
    return Entry(
        key=row.point_id,
        label=point_label(row),
        source=row.source,
        status=row.status,
        error=row.error,
        values=dict(row.metrics),
        intervals=dict(row.ci),
        profile=row.profile,
        timed=_timed(row),
    )


def comparable_rows(rows: Sequence[PointRow]) -> tuple[list[PointRow], int]:
    """Rows to compare and how many single repeats were left out.

    A run with repeats stores each repeat (`repeat` set) and an aggregate row (`repeats` set) holding the
    medians and CIs; the aggregate is what to compare, so single repeats are dropped when aggregates exist.
    """
    if not any(r.repeats is not None for r in rows):
        return list(rows), 0
    kept = [r for r in rows if r.repeat is None]
    return kept, len(rows) - len(kept)


def describe_manifest(manifest: Mapping[str, Any]) -> str:
    git = manifest.get("git") or {}
    commit = (git.get("commit") or "no commit")[:10] + ("+dirty" if git.get("dirty") else "")
    text = f"run {manifest.get('run_id')} at {commit}, started {manifest.get('start_time')}"
    baseline = manifest.get("baseline")
    if isinstance(baseline, Mapping):
        text = f"baseline '{baseline.get('device')}' (updated {baseline.get('updated_at')}) = {text}"
    return text


def _load_run(store: RunStore) -> Side:
    rows, dropped = comparable_rows(store.rows())
    entries = {row.point_id: _row_entry(row) for row in rows}
    notes = (f"{store.path}: {dropped} single repeats left out (their aggregate rows are compared)",)
    return Side("run", str(store.path), describe_manifest(store.manifest), entries, notes if dropped else ())


def _bench_stats(bench: Any, path: Path) -> tuple[str, float, float, float]:
    try:
        name, stats = bench["fullname"], bench["stats"]
        median, q1, q3 = (float(stats[k]) for k in ("median", "q1", "q3"))
    except (KeyError, TypeError, ValueError):
        raise UserInputError(
            f"{path}: a benchmark lacks fullname or stats.median/q1/q3; is this pytest-benchmark JSON?"
        ) from None
    return str(name), median, q1, q3


def _load_benchmarks(path: Path) -> Side:
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserInputError(f"{path} is not a run folder nor a JSON file ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise UserInputError(f"{path}: no 'benchmarks' list; give a pytest --benchmark-json file")
    entries: dict[str, Entry] = {}
    for bench in data["benchmarks"]:
        name, median, q1, q3 = _bench_stats(bench, path)
        if name in entries:
            raise UserInputError(f"{path}: benchmark {name} appears twice")
        values = {BENCH_METRIC: median} if math.isfinite(median) else {}
        intervals = {BENCH_METRIC: (q1, q3)} if math.isfinite(q1) and math.isfinite(q3) else {}
        entries[name] = Entry(name, name, "measured", "ok", None, values, intervals)
    commit = data.get("commit_info") or {}
    machine_info = data.get("machine_info") or {}
    cpu = (machine_info.get("cpu") or {}).get("brand_raw")
    machine = f"{machine_info.get('node')} ({cpu})"
    ident = str(commit.get("id") or "no commit")[:10] + ("+dirty" if commit.get("dirty") else "")
    description = f"pytest-benchmark {data.get('version')} at {ident}, {data.get('datetime')}, on {machine}"
    return Side("benchmark", str(path), description, entries, machine=machine)
