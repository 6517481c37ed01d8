"""Data preparation for the HTML report: runs read from their folders, rows paired, fronts and rates derived.

Rows are plain dicts with every `results.POINT_COLUMNS` key (missing values None, never NaN) plus
`run` (the run's label in the report) and `extra` (the parsed `extra_json` object). Nothing here draws
or writes HTML; figures.py and sections.py do.

Conventions of the sweep (lamina_bench/sweep.py) this module relies on:
- a run stores one row per point; a point with repeats is one aggregate row (`repeats` set, `repeat`
  missing) holding the medians and CIs; single repeats, where a run stores them too, are left out of
  figures when their aggregate exists;
- a modeled row that predicts a measured row carries `extra["predicts"] = <measured point_id>`;
- per-pool time per decode iteration, where recorded, is `extra["pools"]` =
  {"compute": {"dense_ms", "network_ms", "idle_ms"}, "attention": {"attention_ms", "network_ms", "idle_ms"}}.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lamina_bench.errors import UserInputError
from lamina_bench.results import CONFIG_COLUMNS, SOURCES, RunStore

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


def clean(value: Any) -> Any:
    """NaN, pd.NA and NaT -> None; numpy scalars -> Python scalars; anything else unchanged."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def number(row: Mapping[str, Any], key: str) -> float | None:
    """A finite float from `row[key]`, else None."""
    value = clean(row.get(key))
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


# ---- runs -----------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RunData:
    """One run folder as the report sees it."""

    path: Path
    label: str  # the run's name in legends and tables (its run id, made unique)
    manifest: Mapping[str, Any]
    rows: tuple[dict[str, Any], ...]  # every stored row, failed ones too, ordered by timestamp
    telemetry: pd.DataFrame  # results.RunStore.telemetry(): one row per sample

    @property
    def run_id(self) -> str:
        return str(self.manifest.get("run_id") or self.path.name)


def _parse_extra(text: Any, where: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        extra = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{where}: extra_json is not JSON ({exc})") from None
    return extra if isinstance(extra, dict) else {}


def load_run(path: str | Path, label: str | None = None) -> RunData:
    """Read one run folder (manifest, points, telemetry); UserInputError if it is not one."""
    path = Path(path)
    if not path.is_dir():
        raise UserInputError(f"{path} is not a folder; give run folders such as results/<run_id>/")
    store = RunStore.open(path)
    label = label or store.run_id
    rows = []
    for record in store.points().to_dict(orient="records"):
        row = {k: clean(v) for k, v in record.items()}
        row["run"] = label
        row["extra"] = _parse_extra(row.get("extra_json"), f"{path} point {row.get('point_id')}")
        rows.append(row)
    return RunData(path, label, dict(store.manifest), tuple(rows), store.telemetry())


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

_SAME_POINT = [c for c in CONFIG_COLUMNS if c not in ("repeat", "repeats")] + ["run", "source", "profile"]


def _config_key(row: Mapping[str, Any], columns: Iterable[str] = _SAME_POINT) -> tuple:
    return tuple(clean(row.get(c)) for c in columns)


def plot_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The ok rows figures use: aggregates, and single repeats only where no aggregate of them exists."""
    ok = [dict(r) for r in rows if r.get("status") == "ok"]
    aggregated = {_config_key(r) for r in ok if r.get("repeat") is None}
    return [r for r in ok if r.get("repeat") is None or _config_key(r) not in aggregated]


def failed_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [dict(r) for r in rows if r.get("status") != "ok"]


def mix_label(row: Mapping[str, Any]) -> str:
    """Device mix: "1xH100+2xH20 n=2" for Lamina (n = pipelined batches), "2xH100" for the baseline."""
    compute = row.get("compute") or "?"
    if row.get("system") != "lamina":
        return compute
    depth = row.get("pipeline_batches")
    return f"{compute}+{row.get('attention') or '?'}" + (f" n={depth}" if depth is not None else "")


def workload_label(row: Mapping[str, Any]) -> str:
    """The trace, or the fixed batch of a measured point ("B=4 ctx=128"); requests if a trace was cut."""
    parts = [row["trace"]] if row.get("trace") else []
    if row.get("batch_size") is not None:
        parts.append(f"B={row['batch_size']}")
    if row.get("context_len") is not None:
        parts.append(f"ctx={row['context_len']}")
    return " ".join(parts) or "no workload recorded"


def config_label(row: Mapping[str, Any]) -> str:
    """System, mix and workload of a row, e.g. "lamina 1xH100+2xH20 n=2 · azure-conv"."""
    return f"{row.get('system') or '?'} {mix_label(row)} · {workload_label(row)}"


def source_label(rows: Iterable[Mapping[str, Any]]) -> str:
    """The sources present, in SOURCES order ("measured, modeled"); "no rows" when empty."""
    present = {r.get("source") for r in rows}
    return ", ".join(s for s in SOURCES if s in present) or "no rows"


def is_measured(row: Mapping[str, Any]) -> bool:
    return row.get("source") == "measured"


def batch_x(row: Mapping[str, Any]) -> float | None:
    """Batch size of a row: the configured one (measured points), else the simulated mean batch."""
    configured = number(row, "batch_size")
    return configured if configured is not None else number(row, "mean_batch_size")


# ---- 1. headline: Lamina against the homogeneous baseline of about equal cost ----------------------


@dataclass(frozen=True)
class HeadlinePair:
    """A Lamina row and its baseline: same run, model and workload, and cost closest to the Lamina mix."""

    lamina: Mapping[str, Any]
    baseline: Mapping[str, Any]

    def ratio(self, metric: str) -> float | None:
        """Lamina / baseline (derived); None when either is missing or the baseline is 0."""
        a, b = number(self.lamina, metric), number(self.baseline, metric)
        return None if a is None or b is None or b == 0 else a / b


def _workload_key(row: Mapping[str, Any]) -> tuple:
    """Rows compared with each other: same run, measured vs modeled kind, model and workload."""
    columns = ("run", "model", "trace", "batch_size", "context_len", "dtype")
    return (is_measured(row), *_config_key(row, columns))


def _closest_cost(lamina: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """Candidate whose cost is closest to the Lamina row's; unknown costs sort last, ties to the cheaper."""
    target = number(lamina, "cost_usd_per_hour")

    def key(row: Mapping[str, Any]) -> tuple:
        cost = number(row, "cost_usd_per_hour")
        if cost is None or target is None:
            return (1, math.inf, math.inf, mix_label(row))
        return (0, abs(cost - target), cost, mix_label(row))

    return min(candidates, key=key)


def headline_pairs(rows: Iterable[Mapping[str, Any]]) -> tuple[list[HeadlinePair], list[dict[str, Any]]]:
    """(pairs, Lamina rows without any homogeneous row of the same model and workload), from ok rows."""
    usable = plot_rows(rows)
    baselines: dict[tuple, list[dict[str, Any]]] = {}
    for row in usable:
        if row.get("system") == "homogeneous":
            baselines.setdefault(_workload_key(row), []).append(row)
    pairs, alone = [], []
    for row in usable:
        if row.get("system") != "lamina":
            continue
        candidates = baselines.get(_workload_key(row))
        if candidates:
            pairs.append(HeadlinePair(row, _closest_cost(row, candidates)))
        else:
            alone.append(row)
    pairs.sort(key=lambda p: (p.lamina["model"] or "", workload_label(p.lamina), mix_label(p.lamina),
                              not is_measured(p.lamina), p.lamina["run"]))  # fmt: skip
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


def pool_times(row: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per-pool time per decode iteration, ms: {pool: {part: ms}} for the parts of TIME_PARTS.

    `extra["pools"]` when the row has it; else the flat columns, as pool "compute" for a homogeneous row
    (attention runs on the same devices) and UNSPLIT_POOL for a Lamina row. Empty when nothing is known.
    """
    pools = row.get("extra", {}).get("pools")
    if isinstance(pools, Mapping) and pools:
        out = {}
        for pool, parts in pools.items():
            if isinstance(parts, Mapping):
                out[str(pool)] = {p: number(parts, p) for p in TIME_PARTS}
        return {p: v for p, v in out.items() if any(x is not None for x in v.values())}
    flat = {p: number(row, p) for p in TIME_PARTS}
    if all(v is None for v in flat.values()):
        return {}
    return {"compute" if row.get("system") == "homogeneous" else UNSPLIT_POOL: flat}


@dataclass(frozen=True)
class LineRate:
    """NIC line rate between the two pools of a Lamina mix (derived from the device catalog)."""

    gbps: float | None  # None: no NIC known, see `reason`
    reason: str  # how it was derived, or why it is unknown


def nic_line_rate(row: Mapping[str, Any]) -> LineRate:
    """min(Nc x NIC of a compute device, Na x NIC of an attention device): the link the pools share.

    Every byte between the pools leaves one pool's NICs and enters the other's, so the smaller total
    NIC rate bounds it. NIC rates: lamina_bench.hardware catalog (`nic_gbps`, gigabits/s).
    """
    from lamina_bench.hardware import parse_mix

    totals = []
    for key in ("compute", "attention"):
        text = row.get(key)
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


def link_gbps(row: Mapping[str, Any]) -> tuple[float | None, str]:
    """Link bandwidth a Lamina row needs: its peak per-iteration rate, else its mean rate (derived).

    Mean rate = net_bytes_per_token x throughput x 8 / 1e9 (Gb/s, decimal).
    """
    peak = number(row, "net_peak_gbps")
    if peak is not None:
        return peak, "peak"
    per_token, tput = number(row, "net_bytes_per_token"), number(row, "throughput_tok_per_s")
    if per_token is None or tput is None:
        return None, "none"
    return per_token * tput * 8 / 1e9, "mean"


# ---- 5. measured against modeled ----------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """A measured row and the modeled row that predicts it; error = (modeled - measured) / measured."""

    measured: Mapping[str, Any]
    modeled: Mapping[str, Any]

    def metrics(self) -> list[str]:
        """PREDICTION_METRICS both rows have."""
        return [m for m in PREDICTION_METRICS
                if number(self.measured, m) is not None and number(self.modeled, m) is not None]  # fmt: skip

    def error_pct(self, metric: str) -> float | None:
        a, b = number(self.measured, metric), number(self.modeled, metric)
        return None if a is None or b is None or a == 0 else (b - a) / a * 100.0


def predictions(rows: Iterable[Mapping[str, Any]]) -> list[Prediction]:
    """Pairs of each run: by `extra["predicts"]` = measured point_id, else by equal configuration."""
    usable = plot_rows(rows)
    config_columns = ["run"] + [c for c in CONFIG_COLUMNS if c not in ("repeat", "repeats", "requests")]
    measured = [r for r in usable if is_measured(r)]
    by_id = {(r["run"], r["point_id"]): r for r in measured}
    by_config = {_config_key(r, config_columns): r for r in measured}
    out = []
    for row in usable:
        target = row.get("extra", {}).get("predicts")
        if is_measured(row) or target is None:
            continue
        match = by_id.get((row["run"], target)) or by_config.get(_config_key(row, config_columns))
        if match is not None:
            out.append(Prediction(match, row))
    return out


# ---- comparison of runs --------------------------------------------------------------------------


@dataclass(frozen=True)
class RunChange:
    """One point (same point_id) in the first run and in a later one."""

    base: Mapping[str, Any]
    head: Mapping[str, Any]

    def change_pct(self, metric: str) -> float | None:
        a, b = number(self.base, metric), number(self.head, metric)
        return None if a is None or b is None or a == 0 else (b - a) / a * 100.0


def run_changes(runs: Sequence[RunData]) -> list[RunChange]:
    """Points of the first run found (by point_id) in each later run; both ok."""
    if len(runs) < 2:
        return []
    base = {r["point_id"]: r for r in plot_rows(runs[0].rows)}
    out = []
    for run in runs[1:]:
        for row in plot_rows(run.rows):
            if row["point_id"] in base:
                out.append(RunChange(base[row["point_id"]], row))
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
    verdicts = [r.get("telemetry_verdict") for r in measured if r.get("telemetry_verdict")]
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
    "mix_label",
    "nic_line_rate",
    "number",
    "pareto_front",
    "plot_rows",
    "pool_times",
    "predictions",
    "run_changes",
    "source_label",
    "telemetry_reason",
    "workload_label",
]
