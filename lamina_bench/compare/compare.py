"""Regression comparison for CI: two runs (or two pytest-benchmark JSON files), matched point by point.

BASE and HEAD are each a run folder (`results/<run_id>/`, a baseline `results/baselines/<device>/`: both
have manifest.json and points) or a pytest-benchmark JSON file (`pytest --benchmark-json=FILE`); both
must be the same kind. Run points are matched by `point_id` (a hash of the configuration, so the same
configuration has the same id in every run); benchmarks by their pytest node id (`fullname`).

For every metric present in BASE the verdict is one of VERDICTS:
    ok           |change| <= threshold (a metric that changed at all is still listed, with its threshold)
    noise        |change| > threshold but the 95% confidence intervals of the two medians overlap
                 (rows with repeats carry `<metric>_ci_low/_ci_high`; a benchmark's interval is its IQR)
    regression / improvement    |change| > threshold in the metric's bad / good direction (the metric registry)
    changed      |change| > threshold in a metric with no good direction (e.g. generated_tokens)
    missing      the metric has a value in BASE and none in HEAD (an error: missing data is not a pass)
Points in BASE but not in HEAD, and failed points on either side, are errors; points only in HEAD are
reported as new.

Thresholds are per source, because modeled numbers are deterministic while CPU timings are not:
    modeled and derived rows: `--threshold PCT`, default 0 (any change beyond float noise, REL_TOL)
    measured rows, benchmarks, and modeled predictions of measured points (rows with `predicts`: they
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

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamina_bench.compare.sides import BENCH_METRIC, Entry, Side, load_side
from lamina_bench.errors import UserInputError
from lamina_bench.results.metrics import DOWN, METRICS, NEUTRAL, UP

# ---- metric directions and thresholds ------------------------------------------------------------


def direction(metric: str) -> str:
    """The good direction of a metric: the registry's (results/metrics.py), DOWN for a benchmark's
    median seconds, NEUTRAL for anything else (a change is then only "changed")."""
    if metric in METRICS:
        return METRICS[metric].better
    return DOWN if metric == BENCH_METRIC else NEUTRAL


VERDICTS = ("ok", "noise", "regression", "improvement", "changed", "missing", "new")
THRESHOLD_KINDS = ("modeled", "measured")  # --threshold, --measured-threshold
FORMATS = ("text", "markdown", "json")
FAIL_ON = ("regression", "change")
DEFAULT_THRESHOLD_PCT = 0.0  # modeled / derived rows: deterministic, so any change counts
DEFAULT_MEASURED_THRESHOLD_PCT = 25.0  # measured CPU timings on shared CI runners vary by 10-20%
REL_TOL = 1e-9  # relative float noise (another BLAS or CPU may change the last bits); never a change


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

    @staticmethod
    def kind_for(entry: Entry) -> str:
        """Which threshold judges an entry: "measured" (rows resting on run timings) or "modeled"."""
        return "measured" if entry.timed else "modeled"

    def describe(self) -> str:
        measured = "report only" if self.measured_pct is None else f"{self.measured_pct:g}%"
        return f"modeled/derived {self.modeled_pct:g}%, measured (and predictions from a run's own profile) {measured}"


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
    threshold_pct: float | None = None  # the percent that judged it; None: report only
    threshold_kind: str = "modeled"  # which threshold: "modeled" (--threshold) or "measured"

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {self.verdict!r}")
        if self.threshold_kind not in THRESHOLD_KINDS:
            raise ValueError(f"threshold_kind must be one of {', '.join(THRESHOLD_KINDS)}")

    @property
    def changed(self) -> bool:
        """The value differs beyond float noise (REL_TOL), or exists on one side only."""
        if self.base is None or self.head is None:
            return True
        return abs(self.head - self.base) > REL_TOL * abs(self.base)


@dataclass(frozen=True)
class PointComparison:
    key: str
    label: str
    source: str
    state: str  # compared | missing (not in head) | new (only in head) | failed
    threshold_pct: float | None  # None: report only (changes never fail)
    deltas: tuple[MetricDelta, ...] = ()
    detail: str | None = None  # the error of a failed point, or a profile change
    threshold_kind: str = "modeled"  # which threshold judged it (THRESHOLD_KINDS)

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


def _delta(metric: str, base: Entry, head: Entry, threshold_pct: float | None, kind: str) -> MetricDelta:
    b, h = base.values[metric], head.values.get(metric)
    good = direction(metric)
    b_iv, h_iv = base.intervals.get(metric), head.intervals.get(metric)
    judged = dict(threshold_pct=threshold_pct, threshold_kind=kind)
    if h is None:
        return MetricDelta(metric, good, b, None, None, b_iv, None, "missing", **judged)
    change = 100 * (h - b) / abs(b) if b != 0 else None
    verdict = metric_verdict(good, b, h, threshold_pct or 0.0, b_iv, h_iv)
    return MetricDelta(metric, good, b, h, change, b_iv, h_iv, verdict, **judged)


def _compare_entry(base: Entry, head: Entry | None, thresholds: Thresholds) -> PointComparison:
    threshold, kind = thresholds.for_entry(base), Thresholds.kind_for(base)
    common = dict(
        key=base.key, label=base.label, source=base.source, threshold_pct=threshold, threshold_kind=kind
    )
    if head is None:
        return PointComparison(**common, state="missing", detail="in base, not in head")
    failed = [(side, e) for side, e in (("base", base), ("head", head)) if e.status != "ok"]
    if failed:
        detail = "; ".join(f"{side} failed: {e.error}" for side, e in failed)
        return PointComparison(**common, state="failed", detail=detail)
    deltas = [_delta(m, base, head, threshold, kind) for m in base.values]
    deltas += [
        MetricDelta(m, direction(m), None, v, None, None, head.intervals.get(m), "new", threshold, kind)
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
        deltas = [d for p in self.points for d in p.deltas]
        out["metrics_unchanged"] = sum(not d.changed for d in deltas)
        out["metrics_within_threshold"] = sum(d.verdict == "ok" and d.changed for d in deltas)
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
            ],
            "errors": list(self.errors),
            "notes": list(self.notes),
            "points": [_point_dict(p) for p in self.points],
        }


def _point_dict(p: PointComparison) -> dict[str, Any]:
    return {
        "key": p.key,
        "label": p.label,
        "source": p.source,
        "state": p.state,
        "threshold_pct": p.threshold_pct,
        "threshold": p.threshold_kind,
        "detail": p.detail,
        "metrics": [
            {
                "metric": d.metric,
                "direction": d.direction,
                "base": d.base,
                "head": d.head,
                "change_pct": d.change_pct,
                "base_interval": d.base_interval,
                "head_interval": d.head_interval,
                "verdict": d.verdict,
                "changed": d.changed,
                "threshold_pct": d.threshold_pct,
                "threshold": d.threshold_kind,
            }
            for d in p.deltas
        ],
    }


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
        PointComparison(
            e.key, e.label, e.source, "new", thresholds.for_entry(e), threshold_kind=Thresholds.kind_for(e)
        )
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
