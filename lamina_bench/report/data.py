"""Data preparation for the HTML report: runs read from their folders, rows paired, fronts and rates derived.

Rows are `PointRow`s (results/row.py) whose `run_id` is the run's label in the report (its run id, made
unique when the same run is given twice). Nothing here draws or writes HTML; figures.py and sections.py do.

Conventions of the sweep (lamina_bench/sweep/) this module relies on:
- a run stores one row per point; a point with repeats is one aggregate row (`repeats` set, `repeat`
  None) holding the medians and CIs; single repeats, where a run stores them too, are left out of
  figures when their aggregate exists;
- a modeled row that predicts a measured row names it in `predicts` (the measured point id);
- per-pool time per decode iteration, where recorded, is `pools` (pool -> part -> ms).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lamina_bench.catalog.devices import parse_mix
from lamina_bench.errors import UserInputError
from lamina_bench.model.verdict import workload_of
from lamina_bench.results.metrics import SOURCES
from lamina_bench.results.row import CONFIG_FIELDS, PointRow
from lamina_bench.results.store import RunStore

# Headline metrics, Lamina against its baseline; lower is better for the last three.
HEADLINE_METRICS: tuple[str, ...] = (
    "throughput_tok_per_s",
    "tokens_per_usd",
    "usd_per_mtok",
    "mean_batch_size",
    "tbt_p50_ms",
    "tbt_p99_ms",
)
# Metrics compared between a measured row and the modeled row that predicts it, where both have them.
PREDICTION_METRICS: tuple[str, ...] = (
    "throughput_tok_per_s",
    "tbt_p50_ms",
    "tbt_p99_ms",
    "tbt_mean_ms",
    "mean_batch_size",
    "dense_ms",
    "attention_ms",
    "network_ms",
    "idle_ms",
)
TIME_PARTS: tuple[str, ...] = ("dense_ms", "attention_ms", "network_ms", "idle_ms")  # per decode iteration
# Pool names of a breakdown that was not split by pool (flat columns of a Lamina row).
UNSPLIT_POOL = "both pools (not split)"


def _float(value: int | None) -> float | None:
    return None if value is None else float(value)


# ---- runs -----------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RunData:
    """One run folder as the report sees it."""

    path: Path
    label: str  # the run's name in legends and tables (its run id, made unique)
    manifest: Mapping[str, Any]
    rows: tuple[PointRow, ...]  # every stored row, failed ones too, ordered by timestamp; run_id = label
    telemetry: pd.DataFrame  # results.RunStore.telemetry(): one row per sample

    @property
    def run_id(self) -> str:
        return str(self.manifest.get("run_id") or self.path.name)


def load_run(path: str | Path, label: str | None = None) -> RunData:
    """Read one run folder (manifest, points, telemetry); UserInputError if it is not one."""
    path = Path(path)
    if not path.is_dir():
        raise UserInputError(f"{path} is not a folder; give run folders such as results/<run_id>/")
    store = RunStore.open(path)
    label = label or store.run_id
    rows = tuple(row.replace(run_id=label) for row in store.rows())
    return RunData(path, label, dict(store.manifest), rows, store.telemetry())


def load_runs(run_dirs: Sequence[str | Path]) -> tuple[RunData, ...]:
    """Every run folder, labelled by run id; a run id seen twice gets its position appended."""
    if not run_dirs:
        raise UserInputError("give at least one run folder (results/<run_id>/)")
    runs: list[RunData] = []
    for i, path in enumerate(run_dirs):
        run = load_run(path)
        if run.label in {r.label for r in runs}:
            run = load_run(path, label=f"{run.label} (#{i + 1})")
        runs.append(run)
    return tuple(runs)


# ---- row selection and labels ---------------------------------------------------------------------

_SAME_POINT = (*CONFIG_FIELDS, "run_id", "source", "profile")


def _config_key(row: PointRow, columns: Iterable[str] = _SAME_POINT) -> tuple:
    return tuple(getattr(row, c) for c in columns) + (tuple(sorted(row.settings.items())),)


def plot_rows(rows: Iterable[PointRow]) -> list[PointRow]:
    """The ok rows figures use: aggregates, and single repeats only where no aggregate of them exists."""
    ok = [r for r in rows if r.ok]
    aggregated = {_config_key(r) for r in ok if r.repeat is None}
    return [r for r in ok if r.repeat is None or _config_key(r) not in aggregated]


def failed_rows(rows: Iterable[PointRow]) -> list[PointRow]:
    return [r for r in rows if not r.ok]


def mix_label(row: PointRow) -> str:
    """Device mix: "1xH100+2xH20 n=2" for Lamina (n = pipelined batches), "2xH100" for the baseline."""
    compute = row.compute or "?"
    if row.system == "afd":  # attention-FFN disaggregation: the expert pool is held as the compute mix
        depth = row.pipeline_batches
        return f"{row.attention or '?'} attn + {compute} experts" + (
            f" m={depth}" if depth is not None else ""
        )
    if row.system != "lamina":
        return compute
    depth = row.pipeline_batches
    return f"{compute}+{row.attention or '?'}" + (f" n={depth}" if depth is not None else "")


def workload_label(row: PointRow) -> str:
    """The trace, or the fixed batch of a measured point ("B=4 ctx=128"); requests if a trace was cut."""
    parts = [row.trace] if row.trace else []
    if row.batch_size is not None:
        parts.append(f"B={row.batch_size}")
    if row.context_len is not None:
        parts.append(f"ctx={row.context_len}")
    return " ".join(parts) or "no workload recorded"


def group_label(row: PointRow) -> str:
    """The model and workload a figure or frontier may draw together (never two workloads in one):
    a simulated row's model, trace, replayed requests, arrival and price set; a measured row's model
    and its fixed-batch prompt length."""
    workload = workload_of(row)
    if workload is not None:
        return workload.label()
    ctx = f", prompt {row.context_len} tokens" if row.context_len is not None else ""
    device = row.settings.get("device", "this machine")
    return f"{row.model} · fixed batches{ctx} ({row.dtype} on {device})"


def config_label(row: PointRow) -> str:
    """System, mix and workload of a row, e.g. "lamina 1xH100+2xH20 n=2 · azure-conv"."""
    return f"{row.system or '?'} {mix_label(row)} · {workload_label(row)}"


def source_label(rows: Iterable[PointRow]) -> str:
    """The sources present, in SOURCES order ("measured, modeled"); "no rows" when empty."""
    present = {r.source for r in rows}
    return ", ".join(s for s in SOURCES if s in present) or "no rows"


def is_measured(row: PointRow) -> bool:
    return row.source == "measured"


def batch_x(row: PointRow) -> float | None:
    """Batch size of a row: the configured one (measured points), else the simulated mean batch."""
    configured = _float(row.batch_size)
    return configured if configured is not None else row.value("mean_batch_size")


# ---- 1. headline: Lamina against the homogeneous baseline of about equal cost ----------------------


@dataclass(frozen=True)
class HeadlinePair:
    """A Lamina row and its baseline: same run, model and workload, and cost closest to the Lamina mix."""

    lamina: PointRow
    baseline: PointRow

    def ratio(self, metric: str) -> float | None:
        """Lamina / baseline (derived); None when either is missing or the baseline is 0."""
        a, b = self.lamina.value(metric), self.baseline.value(metric)
        return None if a is None or b is None or b == 0 else a / b


def _workload_key(row: PointRow) -> tuple:
    """Rows compared with each other: same run, measured vs modeled kind, model and workload."""
    columns = ("run_id", "model", "trace", "batch_size", "context_len", "dtype")
    return (is_measured(row), *_config_key(row, columns))


def _closest_cost(lamina: PointRow, candidates: Sequence[PointRow]) -> PointRow:
    """Candidate whose cost is closest to the Lamina row's; unknown costs sort last, ties to the cheaper."""
    target = lamina.value("cost_usd_per_hour")

    def key(row: PointRow) -> tuple:
        cost = row.value("cost_usd_per_hour")
        if cost is None or target is None:
            return (1, math.inf, math.inf, mix_label(row))
        return (0, abs(cost - target), cost, mix_label(row))

    return min(candidates, key=key)


def headline_pairs(rows: Iterable[PointRow]) -> tuple[list[HeadlinePair], list[PointRow]]:
    """(pairs, Lamina rows without any homogeneous row of the same model and workload), from ok rows."""
    usable = plot_rows(rows)
    baselines: dict[tuple, list[PointRow]] = {}
    for row in usable:
        if row.system == "homogeneous":
            baselines.setdefault(_workload_key(row), []).append(row)
    pairs, alone = [], []
    for row in usable:
        if row.system != "lamina":
            continue
        candidates = baselines.get(_workload_key(row))
        if candidates:
            pairs.append(HeadlinePair(row, _closest_cost(row, candidates)))
        else:
            alone.append(row)
    pairs.sort(
        key=lambda p: (
            p.lamina.model or "",
            workload_label(p.lamina),
            mix_label(p.lamina),
            not is_measured(p.lamina),
            p.lamina.run_id,
        )
    )
    return pairs, alone


# ---- 3. Pareto frontier -------------------------------------------------------------------------


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: lower x (TBT) and higher y (tokens per USD).

    A point is on the front when every point with x <= its x has a lower y (exact duplicates: the
    first one). Returned in increasing x.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front, best_y = [], -math.inf
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return front


# ---- 4. time per iteration by pool, and the link ---------------------------------------------------


def pool_times(row: PointRow) -> dict[str, dict[str, float | None]]:
    """Per-pool time per decode iteration, ms: {pool: {part: ms}} for the parts of TIME_PARTS.

    `pools` when the row has it; else the flat columns, as pool "compute" for a homogeneous row
    (attention runs on the same devices) and UNSPLIT_POOL for a Lamina row. Empty when nothing is known.
    """
    if row.pools:
        out = {pool: {p: parts.get(p) for p in TIME_PARTS} for pool, parts in row.pools.items()}
        return {p: v for p, v in out.items() if any(x is not None for x in v.values())}
    flat = {p: row.value(p) for p in TIME_PARTS}
    if all(v is None for v in flat.values()):
        return {}
    return {"compute" if row.system == "homogeneous" else UNSPLIT_POOL: flat}


@dataclass(frozen=True)
class LineRate:
    """NIC line rate between the two pools of a Lamina mix (derived from the device catalog)."""

    gbps: float | None  # None: no NIC known, see `reason`
    reason: str  # how it was derived, or why it is unknown


def nic_line_rate(row: PointRow) -> LineRate:
    """min(Nc x NIC of a compute device, Na x NIC of an attention device): the link the pools share.

    Every byte between the pools leaves one pool's NICs and enters the other's, so the smaller total
    NIC rate bounds it. NIC rates: the device catalog (`nic_gbps`, gigabits/s).
    """
    totals = []
    for key in ("compute", "attention"):
        text = getattr(row, key)
        if not text:
            return LineRate(None, f"no {key} mix recorded")
        try:
            mix = parse_mix(text)
        except UserInputError:
            return LineRate(None, f"device of {text} is not in the catalog")
        if mix.device.nic_gbps is None:
            what = "the local CPU (in-process transport)" if mix.device.name == "CPU" else mix.device.name
            return LineRate(None, f"no NIC line rate for {what}")
        totals.append((mix.count * mix.device.nic_gbps, f"{mix.count} x {mix.device.nic_gbps:g} Gb/s"))
    gbps, text = min(totals)
    return LineRate(gbps, f"min of compute {totals[0][1]}, attention {totals[1][1]} (catalog nic_gbps)")


def link_gbps(row: PointRow) -> tuple[float | None, str]:
    """Link bandwidth a Lamina row needs: its peak per-iteration rate, else its mean rate (derived).

    Mean rate = net_bytes_per_token x throughput x 8 / 1e9 (Gb/s, decimal).
    """
    peak = row.value("net_peak_gbps")
    if peak is not None:
        return peak, "peak"
    per_token, tput = row.value("net_bytes_per_token"), row.value("throughput_tok_per_s")
    if per_token is None or tput is None:
        return None, "none"
    return per_token * tput * 8 / 1e9, "mean"


# ---- 5. measured against modeled ----------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """A measured row and the modeled row that predicts it; error = (modeled - measured) / measured."""

    measured: PointRow
    modeled: PointRow

    def metrics(self) -> list[str]:
        """PREDICTION_METRICS both rows have."""
        return [
            m
            for m in PREDICTION_METRICS
            if self.measured.value(m) is not None and self.modeled.value(m) is not None
        ]

    def error_pct(self, metric: str) -> float | None:
        a, b = self.measured.value(metric), self.modeled.value(metric)
        return None if a is None or b is None or a == 0 else (b - a) / a * 100.0


def predictions(rows: Iterable[PointRow]) -> list[Prediction]:
    """Pairs of each run: by `predicts` = measured point_id, else by equal configuration."""
    usable = plot_rows(rows)
    config_columns = ["run_id"] + [c for c in CONFIG_FIELDS if c != "requests"]
    measured = [r for r in usable if is_measured(r)]
    by_id = {(r.run_id, r.point_id): r for r in measured}
    by_config = {_config_key(r, config_columns): r for r in measured}
    out = []
    for row in usable:
        target = row.predicts
        if is_measured(row) or target is None:
            continue
        match = by_id.get((row.run_id, target)) or by_config.get(_config_key(row, config_columns))
        if match is not None:
            out.append(Prediction(match, row))
    return out


# ---- comparison of runs --------------------------------------------------------------------------


@dataclass(frozen=True)
class RunChange:
    """One point (same point_id) in the first run and in a later one."""

    base: PointRow
    head: PointRow

    def change_pct(self, metric: str) -> float | None:
        a, b = self.base.value(metric), self.head.value(metric)
        return None if a is None or b is None or a == 0 else (b - a) / a * 100.0


def run_changes(runs: Sequence[RunData]) -> list[RunChange]:
    """Points of the first run found (by point_id) in each later run; both ok."""
    if len(runs) < 2:
        return []
    base = {r.point_id: r for r in plot_rows(runs[0].rows)}
    out = []
    for run in runs[1:]:
        for row in plot_rows(run.rows):
            if row.point_id in base:
                out.append(RunChange(base[row.point_id], row))
    return out


# ---- 6. telemetry --------------------------------------------------------------------------------


def downsample(frame: pd.DataFrame, max_points: int) -> pd.DataFrame:
    """Every k-th row so at most `max_points` remain (first and last kept); the figure says so."""
    if len(frame) <= max_points:
        return frame
    step = math.ceil(len(frame) / max_points)
    keep = list(range(0, len(frame), step))
    if keep[-1] != len(frame) - 1:
        keep[-1] = len(frame) - 1
    return frame.iloc[keep]


def telemetry_reason(run: RunData) -> str | None:
    """Why a run has no telemetry samples; None when it has some."""
    samples = run.telemetry
    if len(samples) and samples["t_mono_s"].notna().any():
        return None
    measured = [r for r in run.rows if is_measured(r)]
    if not measured:
        return "no measured points in this run (telemetry is sampled only while a point is measured)"
    verdicts = [r.telemetry_verdict for r in measured if r.telemetry_verdict]
    invalid = sorted({v.removeprefix("invalid: ") for v in verdicts if v != "valid"})
    reason = f"no telemetry samples: {'; '.join(invalid)}" if invalid else "no telemetry samples stored"
    if run.manifest.get("nvidia_driver") is None:
        reason += f" (no NVIDIA driver on {run.manifest.get('host') or 'the host'})"
    return reason


__all__ = [
    "HEADLINE_METRICS",
    "PREDICTION_METRICS",
    "TIME_PARTS",
    "UNSPLIT_POOL",
    "HeadlinePair",
    "LineRate",
    "Prediction",
    "RunChange",
    "RunData",
    "batch_x",
    "config_label",
    "downsample",
    "failed_rows",
    "headline_pairs",
    "is_measured",
    "link_gbps",
    "load_run",
    "load_runs",
    "group_label",
    "mix_label",
    "nic_line_rate",
    "pareto_front",
    "plot_rows",
    "pool_times",
    "predictions",
    "run_changes",
    "source_label",
    "telemetry_reason",
    "workload_label",
]
