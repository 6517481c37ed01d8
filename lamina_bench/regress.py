"""Regression comparison for CI: two runs (or two pytest-benchmark JSON files), matched point by point.

BASE and HEAD are each a run folder (`results/<run_id>/`, a baseline `results/baselines/<device>/`: both
have manifest.json and points) or a pytest-benchmark JSON file (`pytest --benchmark-json=FILE`); both
must be the same kind. Run points are matched by `point_id` (a hash of the configuration, so the same
configuration has the same id in every run); benchmarks by their pytest node id (`fullname`).

For every metric present in BASE the verdict is one of VERDICTS:
    ok           |change| <= threshold
    noise        |change| > threshold but the 95% confidence intervals of the two medians overlap
                 (rows with repeats carry `<metric>_ci_low/_ci_high`; a benchmark's interval is its IQR)
    regression / improvement    |change| > threshold in the metric's bad / good direction (DIRECTIONS)
    changed      |change| > threshold in a metric with no good direction (e.g. generated_tokens)
    missing      the metric has a value in BASE and none in HEAD (an error: missing data is not a pass)
Points in BASE but not in HEAD, and failed points on either side, are errors; points only in HEAD are
reported as new.

Thresholds are per source, because modeled numbers are deterministic while CPU timings are not:
    modeled and derived rows: `--threshold PCT`, default 0 (any change beyond float noise, REL_TOL)
    measured rows, benchmarks, and modeled predictions of measured points (extra_json "predicts": they
    are calibrated from a profile taken during the run, so they carry its noise):
    `--measured-threshold PCT`, default 25%, or `report` to show the changes without ever failing on
    them (missing and failed points still fail).
Exit code (ComparisonReport.exit_code): 0 clean, 1 a regression or missing/failed data, 2 bad input
(UserInputError, raised here and turned into exit 2 by the CLI). With fail_on="change" HEAD must match
BASE: any improvement or change beyond the threshold, and any new point or metric, fails too (for the
committed modeled baseline, which changes only together with the code that changes the numbers).

Baselines: `update_baseline` copies a finished run's points (one JSON file each, so a baseline update
reads as a diff in review) and manifest into `results/baselines/<device>/`, replacing the old folder.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lamina_bench.errors import UserInputError
from lamina_bench.results import METRIC_COLUMNS, RunStore, atomic_write_json, normalize_point

# ---- metric directions and thresholds ------------------------------------------------------------

UP, DOWN, NEUTRAL = "up", "down", "none"
# The good direction of every metric of results.METRIC_COLUMNS (plus the benchmark median). NEUTRAL:
# no better or worse, a change is only "changed" (the workload or the measurement differs).
DIRECTIONS: dict[str, str] = {
    "throughput_tok_per_s": UP,
    "generated_tokens": NEUTRAL,  # set by the workload, not by the system's speed
    "tbt_p50_ms": DOWN,
    "tbt_p90_ms": DOWN,
    "tbt_p99_ms": DOWN,
    "tbt_mean_ms": DOWN,
    "mean_batch_size": UP,  # Lamina's point: bigger batches on the compute devices
    "max_batch_size": UP,
    "cost_usd_per_hour": DOWN,
    "tokens_per_usd": UP,
    "usd_per_mtok": DOWN,
    "net_bytes_per_token": DOWN,
    "net_peak_gbps": DOWN,  # link bandwidth the run needs
    "dense_ms": DOWN,
    "attention_ms": DOWN,
    "network_ms": DOWN,
    "idle_ms": DOWN,
    "energy_j": DOWN,
    "energy_j_per_token": DOWN,
    "power_w_mean": NEUTRAL,  # higher power may just mean busier devices
    "sm_busy_pct_mean": NEUTRAL,
    "mem_busy_pct_mean": NEUTRAL,
    "dram_bw_util_pct_mean": NEUTRAL,
    "median_s": DOWN,  # pytest-benchmark: median seconds per call
}
VERDICTS = ("ok", "noise", "regression", "improvement", "changed", "missing", "new")
FORMATS = ("text", "markdown", "json")
FAIL_ON = ("regression", "change")
DEFAULT_THRESHOLD_PCT = 0.0  # modeled / derived rows: deterministic, so any change counts
DEFAULT_MEASURED_THRESHOLD_PCT = 25.0  # measured CPU timings on shared CI runners vary by 10-20%
REL_TOL = 1e-9  # relative float noise (another BLAS or CPU may change the last bits); never a change
BENCH_METRIC = "median_s"


def parse_threshold(
    text: str | float, option: str = "--threshold", allow_report: bool = False
) -> float | None:
    """A threshold in percent (finite, >= 0); "report" -> None (report only) where allow_report."""
    if allow_report and str(text).strip().lower() == "report":
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < 0:
        valid = "a percentage >= 0" + (" or 'report'" if allow_report else "")
        raise UserInputError(f"{option} must be {valid}, e.g. 5 for 5%; got {text!r}")
    return value


@dataclass(frozen=True)
class Thresholds:
    """Percent change beyond which a metric counts, per source; measured_pct None = report only."""

    modeled_pct: float = DEFAULT_THRESHOLD_PCT  # modeled and derived rows (Entry.timed False)
    measured_pct: float | None = DEFAULT_MEASURED_THRESHOLD_PCT  # rows resting on run timings, benchmarks

    def __post_init__(self) -> None:
        parse_threshold(self.modeled_pct, "--threshold")
        if self.measured_pct is not None:
            parse_threshold(self.measured_pct, "--measured-threshold")

    def for_entry(self, entry: Entry) -> float | None:
        return self.measured_pct if entry.timed else self.modeled_pct

    def describe(self) -> str:
        measured = "report only" if self.measured_pct is None else f"{self.measured_pct:g}%"
        return f"modeled/derived {self.modeled_pct:g}%, measured (and predictions from a run's own profile) {measured}"


# ---- one side of a comparison --------------------------------------------------------------------


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
    # predictions of measured points (extra_json "predicts"), calibrated from a profile taken in the run.
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


def _clean(value: Any) -> Any:
    if value is None or value is pd.NA:
        return None
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    return None if isinstance(value, float) and math.isnan(value) else value


def _finite(value: Any) -> float | None:
    value = _clean(value)
    if value is None or isinstance(value, str | bool):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def point_label(row: Mapping[str, Any]) -> str:
    """Human label of a points row: model system mix trace knobs (source)."""
    mix = (row.get("compute") or "") + (f"+{row['attention']}" if row.get("attention") else "")
    knobs = [row.get("model"), row.get("system"), mix, row.get("trace")]
    for key, short in (("batch_size", "B"), ("context_len", "ctx"), ("repeat", "r")):
        if row.get(key) is not None:
            knobs.append(f"{short}={row[key]}")
    if row.get("system") == "lamina" and row.get("pipeline_batches") is not None:
        knobs.append(f"n={row['pipeline_batches']}")
    return " ".join(str(k) for k in knobs if k) + f" ({row.get('source')})"


def _timed(row: Mapping[str, Any]) -> bool:
    if row.get("source") not in ("modeled", "derived"):
        return True
    try:
        extra = json.loads(row.get("extra_json") or "{}")
    except json.JSONDecodeError:
        extra = {}
    return "predicts" in extra


def _row_entry(row: Mapping[str, Any]) -> Entry:
    values, intervals = {}, {}
    for metric in METRIC_COLUMNS:
        value = _finite(row.get(metric))
        if value is None:
            continue
        values[metric] = value
        low, high = _finite(row.get(f"{metric}_ci_low")), _finite(row.get(f"{metric}_ci_high"))
        if low is not None and high is not None:
            intervals[metric] = (low, high)
    return Entry(
        key=str(row["point_id"]), label=point_label(row), source=str(row.get("source")),
        status=str(row.get("status")), error=row.get("error"), values=values, intervals=intervals,
        profile=row.get("profile"), timed=_timed(row),
    )  # fmt: skip


def comparable_rows(frame: pd.DataFrame) -> tuple[list[dict[str, Any]], int]:
    """Rows to compare and how many single repeats were left out.

    A run with repeats stores each repeat (`repeat` set) and an aggregate row (`repeats` set) holding the
    medians and CIs; the aggregate is what to compare, so single repeats are dropped when aggregates exist.
    """
    rows = [{k: _clean(v) for k, v in r.items()} for r in frame.to_dict(orient="records")]
    if not any(r.get("repeats") is not None for r in rows):
        return rows, 0
    kept = [r for r in rows if r.get("repeat") is None]
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
    rows, dropped = comparable_rows(store.points())
    entries: dict[str, Entry] = {}
    for row in rows:
        entries[str(row["point_id"])] = _row_entry(row)
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


# ---- comparison ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricDelta:
    metric: str
    direction: str  # up | down | none
    base: float | None
    head: float | None
    change_pct: float | None  # 100 * (head - base) / |base|; None when base is 0 or a side is missing
    base_interval: tuple[float, float] | None
    head_interval: tuple[float, float] | None
    verdict: str  # one of VERDICTS

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {self.verdict!r}")


@dataclass(frozen=True)
class PointComparison:
    key: str
    label: str
    source: str
    state: str  # compared | missing (not in head) | new (only in head) | failed
    threshold_pct: float | None  # None: report only (changes never fail)
    deltas: tuple[MetricDelta, ...] = ()
    detail: str | None = None  # the error of a failed point, or a profile change

    @property
    def report_only(self) -> bool:
        return self.threshold_pct is None


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def metric_verdict(
    direction: str,
    base: float,
    head: float,
    threshold_pct: float,
    base_interval: tuple[float, float] | None = None,
    head_interval: tuple[float, float] | None = None,
) -> str:
    """ok | noise | regression | improvement | changed for one metric with values on both sides.

    Beyond the threshold means |head - base| > (threshold_pct / 100 + REL_TOL) * |base| (any change at all
    when base is 0). When either side has an interval, a change counts only if the intervals do not
    overlap; a side without one is the single point [value, value].
    """
    if abs(head - base) <= (threshold_pct / 100 + REL_TOL) * abs(base):
        return "ok"
    has_interval = base_interval is not None or head_interval is not None
    if has_interval and _overlap(base_interval or (base, base), head_interval or (head, head)):
        return "noise"
    if direction == NEUTRAL:
        return "changed"
    return "improvement" if (head > base) == (direction == UP) else "regression"


def _delta(metric: str, base: Entry, head: Entry, threshold_pct: float) -> MetricDelta:
    b, h = base.values[metric], head.values.get(metric)
    direction = DIRECTIONS.get(metric, NEUTRAL)
    b_iv, h_iv = base.intervals.get(metric), head.intervals.get(metric)
    if h is None:
        return MetricDelta(metric, direction, b, None, None, b_iv, None, "missing")
    change = 100 * (h - b) / abs(b) if b != 0 else None
    verdict = metric_verdict(direction, b, h, threshold_pct, b_iv, h_iv)
    return MetricDelta(metric, direction, b, h, change, b_iv, h_iv, verdict)


def _compare_entry(base: Entry, head: Entry | None, thresholds: Thresholds) -> PointComparison:
    threshold = thresholds.for_entry(base)
    common = dict(key=base.key, label=base.label, source=base.source, threshold_pct=threshold)
    if head is None:
        return PointComparison(**common, state="missing", detail="in base, not in head")
    failed = [(side, e) for side, e in (("base", base), ("head", head)) if e.status != "ok"]
    if failed:
        detail = "; ".join(f"{side} failed: {e.error}" for side, e in failed)
        return PointComparison(**common, state="failed", detail=detail)
    deltas = [_delta(m, base, head, threshold or 0.0) for m in base.values]
    deltas += [
        MetricDelta(m, DIRECTIONS.get(m, NEUTRAL), None, v, None, None, head.intervals.get(m), "new")
        for m, v in head.values.items()
        if m not in base.values
    ]
    detail = f"profile {base.profile} -> {head.profile}" if base.profile != head.profile else None
    return PointComparison(**common, state="compared", deltas=tuple(deltas), detail=detail)


@dataclass(frozen=True)
class Failure:
    """One reason the comparison fails: a point problem (metric None) or one metric's verdict."""

    point: PointComparison
    metric: MetricDelta | None
    reason: str


@dataclass(frozen=True)
class ComparisonReport:
    base: Side
    head: Side
    thresholds: Thresholds
    fail_on: str
    points: tuple[PointComparison, ...]
    notes: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()  # whole-comparison problems (e.g. nothing to compare)

    def __post_init__(self) -> None:
        if self.fail_on not in FAIL_ON:
            raise UserInputError(f"--fail-on must be one of {', '.join(FAIL_ON)}, got {self.fail_on!r}")

    def failures(self) -> list[Failure]:
        strict = self.fail_on == "change"
        failing_verdicts = {"regression"} | ({"improvement", "changed", "new"} if strict else set())
        out = []
        for p in self.points:
            if p.state in ("missing", "failed") or (strict and p.state == "new"):
                out.append(Failure(p, None, p.state + (f": {p.detail}" if p.detail else "")))
            for d in p.deltas:
                if d.verdict == "missing":
                    out.append(Failure(p, d, f"{d.metric} has no value in head"))
                elif d.verdict in failing_verdicts and not p.report_only:
                    out.append(Failure(p, d, f"{d.metric} {d.verdict}"))
        return out

    @property
    def exit_code(self) -> int:
        return 1 if self.errors or self.failures() else 0

    def counts(self) -> dict[str, int]:
        """Points by state, and metrics by verdict (compared points only)."""
        out = {s: sum(p.state == s for p in self.points) for s in ("compared", "missing", "failed", "new")}
        for verdict in VERDICTS:
            out[f"metrics_{verdict}"] = sum(d.verdict == verdict for p in self.points for d in p.deltas)
        return out

    def to_dict(self) -> dict[str, Any]:
        side = lambda s: {"kind": s.kind, "path": s.path, "description": s.description}  # noqa: E731
        return {
            "exit_code": self.exit_code,
            "base": side(self.base),
            "head": side(self.head),
            "thresholds": {
                "modeled_pct": self.thresholds.modeled_pct,
                "measured_pct": self.thresholds.measured_pct,
                "rel_tol": REL_TOL,
            },
            "fail_on": self.fail_on,
            "counts": self.counts(),
            "failures": [
                {
                    "key": f.point.key,
                    "label": f.point.label,
                    "metric": f.metric.metric if f.metric else None,
                    "reason": f.reason,
                }
                for f in self.failures()
            ],  # fmt: skip
            "errors": list(self.errors),
            "notes": list(self.notes),
            "points": [_point_dict(p) for p in self.points],
        }


def _point_dict(p: PointComparison) -> dict[str, Any]:
    return {
        "key": p.key, "label": p.label, "source": p.source, "state": p.state,
        "threshold_pct": p.threshold_pct, "detail": p.detail,
        "metrics": [
            {"metric": d.metric, "direction": d.direction, "base": d.base, "head": d.head,
             "change_pct": d.change_pct, "base_interval": d.base_interval,
             "head_interval": d.head_interval, "verdict": d.verdict}
            for d in p.deltas
        ],
    }  # fmt: skip


def compare_sides(
    base: Side, head: Side, thresholds: Thresholds | None = None, fail_on: str = "regression"
) -> ComparisonReport:
    """Match `head` against `base` entry by entry (see the module docstring for the verdicts)."""
    if base.kind != head.kind:
        raise UserInputError(
            f"cannot compare a {base.kind} ({base.path}) with a {head.kind} ({head.path}); give two of a kind"
        )
    thresholds = thresholds or Thresholds()

    def ordered(entries):  # stable output whatever order the rows were stored in
        return sorted(entries.items(), key=lambda item: (item[1].label, item[0]))

    points = [_compare_entry(e, head.entries.get(k), thresholds) for k, e in ordered(base.entries)]
    points += [
        PointComparison(e.key, e.label, e.source, "new", thresholds.for_entry(e))
        for k, e in ordered(head.entries)
        if k not in base.entries
    ]
    notes = list(base.notes + head.notes)
    if base.machine and head.machine and base.machine != head.machine:
        notes.append(f"base ran on {base.machine}, head on {head.machine}: timings may not be comparable")
    errors = () if base.entries else (f"base {base.path} has no points: nothing was compared",)
    return ComparisonReport(base, head, thresholds, fail_on, tuple(points), tuple(notes), errors)


def compare_paths(
    base: str | Path, head: str | Path, thresholds: Thresholds | None = None, fail_on: str = "regression"
) -> ComparisonReport:
    """`lamina-bench compare BASE HEAD`: load both sides and compare them."""
    return compare_sides(load_side(base), load_side(head), thresholds, fail_on)


# ---- formatting ----------------------------------------------------------------------------------


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def _pct(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.2e}%" if value != 0 and abs(value) < 0.01 else f"{value:+.2f}%"


def _interval(iv: tuple[float, float] | None) -> str:
    return "" if iv is None else f" [{iv[0]:.4g}, {iv[1]:.4g}]"


_SHOWN = ("regression", "improvement", "changed", "noise", "missing", "new")


def _listed(report: ComparisonReport) -> list[tuple[PointComparison, MetricDelta]]:
    """(point, metric) pairs worth showing: every verdict except ok."""
    return [(p, d) for p in report.points for d in p.deltas if d.verdict in _SHOWN]


def _verdict_text(p: PointComparison, d: MetricDelta) -> str:
    return d.verdict + (" (report only)" if p.report_only and d.verdict != "missing" else "")


def _summary(report: ComparisonReport) -> str:
    c = report.counts()
    head = "FAIL" if report.exit_code else "PASS"
    return (
        f"{head}: {c['compared']} points compared, {c['metrics_regression']} regressions, "
        f"{c['metrics_improvement']} improvements, {c['metrics_changed']} changed, "
        f"{c['metrics_noise']} within noise; {c['missing']} missing, {c['failed']} failed, {c['new']} new points"
    )


def _point_problems(report: ComparisonReport) -> list[PointComparison]:
    return [p for p in report.points if p.state in ("missing", "failed", "new")]


def format_text(report: ComparisonReport) -> str:
    lines = [
        f"base: {report.base.description}",
        f"head: {report.head.description}",
        f"thresholds: {report.thresholds.describe()}; fail on: {report.fail_on}",
    ]
    lines += [f"error: {e}" for e in report.errors] + [f"note: {n}" for n in report.notes]
    for p in _point_problems(report):
        lines.append(f"{p.state.upper()} point {p.key} {p.label}" + (f": {p.detail}" if p.detail else ""))
    for p, d in _listed(report):
        lines.append(
            f"{_verdict_text(p, d).upper()} {p.key} {p.label} {d.metric}: {_num(d.base)}{_interval(d.base_interval)}"
            f" -> {_num(d.head)}{_interval(d.head_interval)} ({_pct(d.change_pct)})"
        )
    for p in report.points:
        if p.detail and p.state == "compared":
            lines.append(f"note: {p.key} {p.label}: {p.detail}")
    lines.append(_summary(report))
    return "\n".join(lines)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def format_markdown(report: ComparisonReport) -> str:
    """A pull-request comment: verdict line, what was compared, a table of what changed."""
    mark = "❌" if report.exit_code else "✅"
    lines = [
        f"### {mark} lamina-bench compare: {_summary(report)}",
        "",
        f"- base: {_md_cell(report.base.description)}",
        f"- head: {_md_cell(report.head.description)}",
        f"- thresholds: {report.thresholds.describe()}; fail on: {report.fail_on}; "
        "a change counts only where the 95% intervals do not overlap",
    ]
    lines += [f"- **error**: {_md_cell(e)}" for e in report.errors]
    lines += [f"- note: {_md_cell(n)}" for n in report.notes]
    problems = _point_problems(report)
    if problems:
        lines += ["", "| point | id | state | detail |", "|---|---|---|---|"]
        lines += [
            f"| {_md_cell(p.label)} | `{p.key}` | **{p.state}** | {_md_cell(p.detail or '')} |"
            for p in problems
        ]
    listed = _listed(report)
    if listed:
        lines += ["", "| point | metric | base | head | change | verdict |", "|---|---|---:|---:|---:|---|"]
        for p, d in listed:
            verdict = _verdict_text(p, d)
            verdict = f"**{verdict}**" if d.verdict in ("regression", "missing") else verdict
            lines.append(
                f"| {_md_cell(p.label)} `{p.key}` | {d.metric} | {_num(d.base)}{_interval(d.base_interval)} "
                f"| {_num(d.head)}{_interval(d.head_interval)} | {_pct(d.change_pct)} | {verdict} |"
            )
    return "\n".join(lines) + "\n"


def format_json(report: ComparisonReport) -> str:
    return json.dumps(report.to_dict(), indent=1)


def format_report(report: ComparisonReport, fmt: str = "text") -> str:
    formatters = {"text": format_text, "markdown": format_markdown, "json": format_json}
    if fmt not in formatters:
        raise UserInputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return formatters[fmt](report)


# ---- baselines -----------------------------------------------------------------------------------

BASELINES_ROOT = Path("results/baselines")
_DEVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class BaselineInfo:
    device: str
    path: str
    run_id: str | None
    description: str
    updated_at: str | None
    points_ok: int
    points_failed: int
    sources: Mapping[str, int]


def default_device(store: RunStore, sources: Iterable[str]) -> str:
    """ "modeled" when every point is modeled or derived (no local device measured), else the first GPU's
    name in the manifest (lower-case, spaces -> '-'), else "cpu"."""
    if set(sources) <= {"modeled", "derived"}:
        return "modeled"
    devices = store.manifest.get("devices")
    names = [d.get("name") for d in devices if isinstance(d, Mapping)] if isinstance(devices, list) else []
    gpus = [str(n) for n in names if n and str(n).upper() != "CPU"]
    return re.sub(r"[^a-z0-9._-]+", "-", gpus[0].lower()).strip("-") if gpus else "cpu"


def _check_device(device: str) -> str:
    if not _DEVICE_RE.match(device):
        raise UserInputError(f"--device {device!r} must be letters, digits, '.', '_' or '-' (a folder name)")
    return device


def _baseline_rows(store: RunStore) -> list[dict[str, Any]]:
    if store.manifest.get("status") == "running":
        raise UserInputError(
            f"{store.path} is still running or was killed (manifest status 'running'); finish it first"
        )
    frame = store.points()
    if frame.empty:
        raise UserInputError(f"{store.path} has no points; a baseline needs at least one")
    rows = [normalize_point({k: _clean(v) for k, v in r.items()}) for r in frame.to_dict(orient="records")]
    failed = [r["point_id"] for r in rows if r["status"] != "ok"]
    if failed:
        raise UserInputError(
            f"{store.path} has {len(failed)} failed points (e.g. {failed[0]}); rerun them before using it as a baseline"
        )
    return rows


def update_baseline(
    run_dir: str | Path, device: str | None = None, root: str | Path = BASELINES_ROOT
) -> BaselineInfo:
    """Copy a finished run's points (points/<id>.json) and manifest into `root/<device>/`.

    The new folder is written beside the old one with the atomic writers, then swapped in by two
    renames (old -> .<device>.old-*, new -> <device>), so readers see the old baseline or the new one;
    a crash between the renames leaves both complete under their dot-names.
    """
    store = RunStore.open(run_dir)
    rows = _baseline_rows(store)
    device = _check_device(device or default_device(store, (r["source"] for r in rows)))
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    staging = root / f".{device}.new-{token}"
    try:
        (staging / "points").mkdir(parents=True)
        for row in rows:
            atomic_write_json(staging / "points" / f"{row['point_id']}.json", row)
        manifest = dict(store.manifest)
        manifest["baseline"] = {
            "device": device,
            "source_run": str(store.path),
            "source_run_id": store.run_id,
            "updated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "points": len(rows),
        }
        atomic_write_json(staging / "manifest.json", manifest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _swap_in(staging, root / device, root / f".{device}.old-{token}")
    return baseline_info(root / device)


def _swap_in(staging: Path, target: Path, old: Path) -> None:
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    fd = os.open(target.parent, os.O_RDONLY)  # persist the renames
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    shutil.rmtree(old, ignore_errors=True)


def baseline_info(path: str | Path) -> BaselineInfo:
    store = RunStore.open(path)
    frame = store.points()
    meta = store.manifest.get("baseline") or {}
    return BaselineInfo(
        device=str(meta.get("device") or Path(path).name), path=str(path), run_id=store.manifest.get("run_id"),
        description=describe_manifest(store.manifest), updated_at=meta.get("updated_at"),
        points_ok=int((frame["status"] == "ok").sum()), points_failed=int((frame["status"] != "ok").sum()),
        sources={str(k): int(v) for k, v in frame["source"].value_counts().sort_index().items()},
    )  # fmt: skip


def baseline_folder(device: str, root: str | Path = BASELINES_ROOT) -> Path:
    """`root/<device>`, which must hold a baseline; UserInputError naming the baselines there otherwise."""
    folder = Path(root) / _check_device(device)
    if not (folder / "manifest.json").is_file():
        have = ", ".join(b.device for b in list_baselines(root)) or "none"
        raise UserInputError(f"no baseline {device!r} under {root}; baselines there: {have}")
    return folder


def list_baselines(root: str | Path = BASELINES_ROOT) -> list[BaselineInfo]:
    """Every `root/<device>/` holding a manifest, by device name."""
    root = Path(root)
    if not root.is_dir():
        return []
    folders = sorted(p for p in root.iterdir() if p.is_dir() and (p / "manifest.json").is_file())
    return [baseline_info(p) for p in folders if not p.name.startswith(".")]


def baseline_table(infos: Sequence[BaselineInfo]) -> str:
    if not infos:
        return "no baselines"
    lines = []
    for b in infos:
        sources = ", ".join(f"{n} {s}" for s, n in b.sources.items())
        lines.append(
            f"{b.device}: {b.points_ok} ok, {b.points_failed} failed points ({sources}); {b.description}"
        )
        lines.append(f"  {b.path}")
    return "\n".join(lines)


__all__ = [
    "BASELINES_ROOT",
    "DEFAULT_MEASURED_THRESHOLD_PCT",
    "DEFAULT_THRESHOLD_PCT",
    "DIRECTIONS",
    "FAIL_ON",
    "FORMATS",
    "REL_TOL",
    "VERDICTS",
    "BaselineInfo",
    "ComparisonReport",
    "Entry",
    "Failure",
    "MetricDelta",
    "PointComparison",
    "Side",
    "Thresholds",
    "baseline_folder",
    "baseline_info",
    "baseline_table",
    "comparable_rows",
    "compare_paths",
    "compare_sides",
    "default_device",
    "format_report",
    "list_baselines",
    "load_side",
    "metric_verdict",
    "parse_threshold",
    "point_label",
    "update_baseline",
]
