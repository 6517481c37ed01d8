"""Comparison reports as text, markdown (a pull-request comment) or JSON."""

from __future__ import annotations

import json

from lamina_bench.compare.compare import FORMATS, ComparisonReport, MetricDelta, PointComparison
from lamina_bench.errors import UserInputError


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def _pct(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.2e}%" if value != 0 and abs(value) < 0.01 else f"{value:+.2f}%"


def _interval(iv: tuple[float, float] | None) -> str:
    return "" if iv is None else f" [{iv[0]:.4g}, {iv[1]:.4g}]"


def _listed(report: ComparisonReport) -> list[tuple[PointComparison, MetricDelta]]:
    """(point, metric) pairs to show: every metric whose value changed at all (beyond float noise),
    whatever its verdict, including changes within the threshold; unchanged ones are only counted."""
    return [(p, d) for p in report.points for d in p.deltas if d.changed or d.verdict != "ok"]


def _verdict_text(p: PointComparison, d: MetricDelta) -> str:
    if d.verdict == "ok":
        return "ok (within threshold)"
    return d.verdict + (" (report only)" if p.report_only and d.verdict != "missing" else "")


def _threshold_text(d: MetricDelta) -> str:
    """The threshold that judged a metric and which one it is, e.g. "25% measured"."""
    pct = "report only" if d.threshold_pct is None else f"{d.threshold_pct:g}%"
    return f"{pct} {d.threshold_kind}"


def _summary(report: ComparisonReport) -> str:
    c = report.counts()
    head = "FAIL" if report.exit_code else "PASS"
    return (
        f"{head}: {c['compared']} points compared, {c['metrics_regression']} regressions, "
        f"{c['metrics_improvement']} improvements, {c['metrics_changed']} changed, "
        f"{c['metrics_noise']} within noise, {c['metrics_within_threshold']} within threshold, "
        f"{c['metrics_unchanged']} unchanged metrics; "
        f"{c['missing']} missing, {c['failed']} failed, {c['new']} new points"
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
            f" -> {_num(d.head)}{_interval(d.head_interval)} ({_pct(d.change_pct)}) threshold {_threshold_text(d)}"
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
        lines += [
            "",
            "| point | metric | base | head | change | verdict | threshold |",
            "|---|---|---:|---:|---:|---|---|",
        ]
        for p, d in listed:
            verdict = _verdict_text(p, d)
            verdict = f"**{verdict}**" if d.verdict in ("regression", "missing") else verdict
            lines.append(
                f"| {_md_cell(p.label)} `{p.key}` | {d.metric} | {_num(d.base)}{_interval(d.base_interval)} "
                f"| {_num(d.head)}{_interval(d.head_interval)} | {_pct(d.change_pct)} | {verdict} "
                f"| {_threshold_text(d)} |"
            )
    return "\n".join(lines) + "\n"


def format_json(report: ComparisonReport) -> str:
    return json.dumps(report.to_dict(), indent=1)


def format_report(report: ComparisonReport, fmt: str = "text") -> str:
    formatters = {"text": format_text, "markdown": format_markdown, "json": format_json}
    if fmt not in formatters:
        raise UserInputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return formatters[fmt](report)
