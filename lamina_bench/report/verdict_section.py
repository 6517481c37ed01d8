"""The report's first section: the verdict per model, workload and TBT target (model/verdict.py).

One table per model and workload (one price set each): a line per TBT p99 target with the best Lamina
and the best homogeneous configuration meeting it, their tokens per USD, throughput, TBT, mean batch and
ratio, why, the break-even price of the memory device and the link rate Lamina needs; under it the best
tokens per USD per compute:memory ratio of the winning device pair. A mixture-of-experts workload with
attention-FFN disaggregation rows gets two more columns: the best AFD configuration and its tokens per USD
against the same homogeneous baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

from lamina_bench.catalog.devices import load_catalog
from lamina_bench.errors import UserInputError
from lamina_bench.model.verdict import DEFAULT_SLOS_MS, Verdict, verdicts
from lamina_bench.report.data import RunData, mix_label, source_label
from lamina_bench.report.page import Document, Section, esc, fmt_num, note, table
from lamina_bench.results.row import PointRow

_HEADERS = ["TBT p99 target (ms)", "answer", "best Lamina", "best homogeneous", "tokens per USD (L / H)",
            "throughput tok/s (L / H)", "TBT p50 / p99 ms (L | H)", "mean batch (L / H)", "why",
            "break-even price of the memory device", "link needed"]  # fmt: skip


def slo_targets(runs: Sequence[RunData]) -> tuple[float, ...]:
    """The TBT targets the runs' sweep specs ask for (`slo_ms` of [[modeled]] blocks), else the defaults."""
    found = set()
    for run in runs:
        toml = (run.manifest.get("spec") or {}).get("toml") or {}
        for block in toml.get("modeled") or []:
            values = block.get("slo_ms") if isinstance(block, dict) else None
            values = values if isinstance(values, list) else [values] if values is not None else []
            found.update(float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool))
    return tuple(sorted(found)) or DEFAULT_SLOS_MS


def _pair(lamina: PointRow | None, homog: PointRow | None, metric: str) -> str:
    values = [None if r is None else r.value(metric) for r in (lamina, homog)]
    return " / ".join(fmt_num(v) for v in values)


def _tbt(row: PointRow | None) -> str:
    return (
        "n/a" if row is None else f"{fmt_num(row.value('tbt_p50_ms'))} / {fmt_num(row.value('tbt_p99_ms'))}"
    )


def _mix(row: PointRow | None) -> str:
    if row is None:
        return "none meets it"
    cap = row.settings.get("max_batch")
    return esc(mix_label(row) + (f", batch cap {cap}" if cap else ""))


def _break_even(v: Verdict) -> str:
    if v.break_even is None:
        return "n/a"
    device, price = v.break_even
    try:
        listed = load_catalog(prices=v.workload.price_set)[device].usd_per_hour
    except (UserInputError, KeyError):
        listed = None
    now = f" (set price {fmt_num(listed)})" if listed is not None else ""
    if price <= 0:
        return esc(f"none: even a free {device} would not make Lamina pay{now}")
    return esc(f"{device} at {price:,.2f} USD/h{now}")


def _answer(v: Verdict) -> str:
    css = "" if v.ratio is None else ("better" if v.ratio > 1 else "worse")
    return f"<span class='{css}'>{esc(v.answer())}</span>"


_AFD_HEADERS = ["best AFD (attention + experts)", "tokens per USD (AFD / H)"]


def _afd_mix(row: PointRow | None) -> str:
    if row is None:
        return "none meets it"
    cap = row.settings.get("max_batch")
    text = f"{row.attention} + {row.compute} m={row.pipeline_batches}" + (f", batch cap {cap}" if cap else "")
    return esc(text)


def _line(v: Verdict, afd: bool = False) -> list[str]:
    link = v.link_gbps
    extra = [_afd_mix(v.afd), _pair(v.afd, v.homogeneous, "tokens_per_usd")] if afd else []
    return [
        "none" if v.slo_ms is None else fmt_num(v.slo_ms), _answer(v), _mix(v.lamina), _mix(v.homogeneous),
        _pair(v.lamina, v.homogeneous, "tokens_per_usd"), _pair(v.lamina, v.homogeneous, "throughput_tok_per_s"),
        f"{_tbt(v.lamina)} | {_tbt(v.homogeneous)}", _pair(v.lamina, v.homogeneous, "mean_batch_size"),
        esc(v.why) or "n/a", _break_even(v), "n/a" if link is None else f"{link:,.0f} Gb/s peak", *extra,
    ]  # fmt: skip


def _sensitivity(group: Sequence[Verdict]) -> str:
    lines = []
    for v in group:
        if v.sensitivity:
            ratios = "; ".join(f"{esc(mix)} {fmt_num(tpu)}" for mix, tpu in v.sensitivity[:6])
            lines.append(f"<li>at {fmt_num(v.slo_ms) if v.slo_ms else 'no target'} ms: {ratios}</li>")
    if not lines:
        return ""
    return (
        "<p>Tokens per USD of the winning device pair by compute:memory counts:</p><ul>"
        + "".join(lines)
        + "</ul>"
    )


def verdict_section(runs: Sequence[RunData], doc: Document) -> Section:
    rows = [row for run in runs for row in run.rows]
    all_verdicts = verdicts(rows, slo_targets(runs))
    title = "The answer: does attention offloading pay, at which TBT target, on which mix"
    if not all_verdicts:
        body = note(
            "No modeled trace replay with prices in these runs: add a [[modeled]] block to the sweep."
        )
        return Section("verdict", title, "no rows", body)
    html = [
        "<p>For each model and workload (one price set each, never mixed), the best Lamina configuration "
        "against the best homogeneous one whose TBT p99 meets the target, by tokens per USD. Numbers are "
        "modeled; ratios, break-even prices and the reasons are derived from them. The break-even price is "
        "the memory device's price per hour at which Lamina's tokens per USD equals the baseline's.</p>"
    ]
    by_workload: dict[object, list[Verdict]] = {}
    for v in all_verdicts:
        by_workload.setdefault(v.workload, []).append(v)
    used = []
    for workload, group in by_workload.items():
        html.append(f"<h3>{esc(workload.label())}</h3>")
        afd = any(v.has_afd for v in group)
        headers = _HEADERS + (_AFD_HEADERS if afd else [])
        html.append(
            table(headers, [_line(v, afd) for v in group], numeric=[True] + [False] * (len(headers) - 1))
        )
        html.append(_sensitivity(group))
        used += [r for v in group for r in (v.lamina, v.homogeneous, v.afd) if r is not None]
    return Section("verdict", title, f"{source_label(used)}; ratios derived", "".join(html))
