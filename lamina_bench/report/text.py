"""Plain-text and markdown tables for the command line: runs, model error, simulations, the paper's table."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from lamina_bench.model.paper import Comparison
from lamina_bench.model.result import SimulationResult
from lamina_bench.model.search import SearchResult
from lamina_bench.report.data import predictions
from lamina_bench.results.row import PointRow
from lamina_bench.results.table import points_frame

_SUMMARY_COLUMNS = (
    "source",
    "model",
    "system",
    "compute",
    "attention",
    "trace",
    "batch_size",
    "pipeline_batches",
    "throughput_tok_per_s",
    "tbt_p50_ms",
    "tbt_mean_ms",
    "tokens_per_usd",
    "status",
)


def summary_text(rows: Sequence[PointRow]) -> str:
    """Plain-text summary of a run: each row's headline metrics with its source."""
    frame = points_frame(rows)[list(_SUMMARY_COLUMNS)]
    return frame.to_string(index=False, na_rep="-", float_format=lambda x: f"{x:,.4g}")


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def model_error_text(rows: Sequence[PointRow]) -> str | None:
    """Measured points next to the model's predictions of them (from this machine's profile), with the
    relative errors and their median; None when the rows hold no such pairs."""
    pairs = predictions(rows)
    if not pairs:
        return None
    lines = [
        "model error (modeled vs measured, same configuration; profile taken on this machine):",
        f"{'system':<12} {'B':>3} {'n':>2} {'tok/s meas':>10} {'tok/s model':>11} {'err':>6} "
        f"{'TBT ms meas':>11} {'TBT ms model':>12} {'err':>6}",
    ]
    errors = []
    for p in pairs:
        m, s = p.measured, p.modeled
        e_tput, e_tbt = p.error_pct("throughput_tok_per_s"), p.error_pct("tbt_mean_ms")
        errors += [abs(e) for e in (e_tput, e_tbt) if e is not None]
        lines.append(
            f"{m.system:<12} {m.batch_size:>3} {m.pipeline_batches:>2} "
            f"{_cell(m.value('throughput_tok_per_s'), '>10.1f')} {_cell(s.value('throughput_tok_per_s'), '>11.1f')} "
            f"{_cell(e_tput, '>+5.0f')}% {_cell(m.value('tbt_mean_ms'), '>11.2f')} "
            f"{_cell(s.value('tbt_mean_ms'), '>12.2f')} {_cell(e_tbt, '>+5.0f')}%"
        )
    if not errors:
        return "\n".join([*lines, "median absolute error: - (no pair has both figures)"])
    lines.append(f"median absolute error: {statistics.median(errors):.1f}% over {len(errors)} figures")
    return "\n".join(lines)


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def comparisons_markdown(rows: list[Comparison]) -> str:
    """A markdown table of `paper_comparisons` (one line per model x trace) and what its columns mean."""
    head = (
        "| model | trace | homogeneous | Lamina | tok/s H | tok/s L | L/H | mean batch H | mean batch L "
        "| TBT p50/p99 ms H | TBT p50/p99 ms L | tok/$ H | tok/$ L | L/H tok/$ | L/H whole trace | rejected H/L |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in rows:
        h, la = c.homogeneous, c.lamina
        lines.append(
            f"| {c.model} | {c.trace} | {h.compute} | {la.compute}+{la.attention} "
            f"| {_fmt(h.saturated_throughput_tok_per_s, ',.0f')} | {_fmt(la.saturated_throughput_tok_per_s, ',.0f')} "
            f"| {_fmt(c.throughput_ratio, '.2f')} "
            f"| {_fmt(h.saturated_mean_batch_size, '.0f')} | {_fmt(la.saturated_mean_batch_size, '.0f')} "
            f"| {_fmt(h.tbt_p50_ms, '.1f')}/{_fmt(h.tbt_p99_ms, '.1f')} "
            f"| {_fmt(la.tbt_p50_ms, '.1f')}/{_fmt(la.tbt_p99_ms, '.1f')} "
            f"| {_fmt(h.saturated_tokens_per_usd, ',.0f')} | {_fmt(la.saturated_tokens_per_usd, ',.0f')} "
            f"| {_fmt(c.tokens_per_usd_ratio, '.2f')} | {_fmt(c.whole_trace_throughput_ratio, '.2f')} "
            f"| {h.rejected_requests}/{la.rejected_requests} |"
        )
    first = rows[0].lamina if rows else None
    if first is not None:
        lines += [
            "",
            f"Saturate mode (all requests queued at t=0, {_serving(first)}, {first.dtype}), Lamina ping-pong "
            f"(n={first.pipeline_batches}). tok/s, mean batch and tok/$ cover the saturated phase (requests "
            "still queued); 'L/H whole trace' includes the drain after the last admission. TBT over all tokens. "
            "Rejected: requests whose prompt + output exceed the whole KV capacity. "
            f"Source: {first.source}, profile: {first.profile}.",
        ]
    return "\n".join(lines)


def _serving(result: SimulationResult) -> str:
    """What the replay covers: decode only (reserve-all), or the scheduler with prefill included."""
    return (
        "decode only"
        if result.scheduler == "reserve-all"
        else f"scheduler {result.scheduler}, prefill included"
    )


def result_table(result: SimulationResult) -> str:
    """`key  value` lines of one result, for the CLI."""
    width = max(len(k) for k in result.to_dict())
    out = []
    for key, value in result.to_dict().items():
        text = "n/a" if value is None else (f"{value:,.4g}" if isinstance(value, float) else str(value))
        out.append(f"{key:<{width}}  {text}")
    return "\n".join(out)


def search_table(result: SearchResult, top: int = 15) -> str:
    """Markdown: the verdict first, then the frontier of each system, then the ranked configurations."""
    slo = f"{result.tbt_slo_ms:g} ms" if result.tbt_slo_ms is not None else "none"
    budget = f"{result.budget_usd_per_hour:g} USD/h" if result.budget_usd_per_hour is not None else "none"
    lines = [
        f"search: {result.model} on {result.trace} (first {result.requests_used} requests, saturate mode), "
        f"TBT p99 target {slo}, budget {budget}, prices {result.price_set} (devices: {', '.join(result.devices)}); "
        f"{result.screened} configurations estimated ({len(result.dropped)} dropped: weights do not fit, SLO), "
        f"{len(result.ranked)} replayed (source: {_search_sources(result)})",
        "",
        *_verdict_lines(result),
        "",
        "frontier (no other configuration of the system is both faster and cheaper):",
        "",
        _HEADER.replace("| # |", "|"),
        _RULE.replace("|---|", "|", 1),
    ]
    for rows in result.frontier().values():
        lines += [_row_line(None, r) for r in rows]
    if result.rank_by == "capacity":
        return "\n".join(lines + ["", *_capacity_lines(result, top)])
    lines += ["", "ranked by tokens per USD:", "", _HEADER, _RULE]
    lines += [_row_line(str(i), cand) for i, cand in enumerate(result.rows()[:top], 1)]
    return "\n".join(lines)


def _capacity_lines(result: SearchResult, top: int) -> list[str]:
    """The candidates ranked by USD per M output tokens at their capacity (model/capacity.py)."""
    lines = ["ranked by USD per M output tokens at the capacity (highest Poisson rate meeting p99 TTFT and TPOT):",
             "", "| # | configuration | capacity req/s | USD/h | USD per M output tokens |", "|---|---|---|---|---|"]  # fmt: skip
    for i, cand in enumerate(result.ranked[:top], 1):
        cap = cand.capacity
        rate = "n/a" if cap is None or cap.rate_per_s is None else f"{cap.rate_per_s:,.3g}"
        usd = "n/a" if cap is None or cap.usd_per_mtok is None else f"{cap.usd_per_mtok:,.3g}"
        cost = "n/a" if cap is None or cap.cost_usd_per_hour is None else f"{cap.cost_usd_per_hour:,.2f}"
        lines.append(f"| {i} | {cand.config.label()} | {rate} | {cost} | {usd} |")
    return lines


_HEADER = (
    "| # | system | compute | attention | n | batch cap | tok/s | mean batch | TBT p99 ms | USD/h | tok/USD |"
)
_RULE = "|---|---|---|---|---|---|---|---|---|---|---|"


def _verdict_lines(result: SearchResult) -> list[str]:
    v = result.verdict()
    if v is None:
        return ["verdict: nothing replayed meets the target"]
    lines = [f"verdict: {v.answer()}"]
    if v.lamina is not None and v.homogeneous is not None:
        lines.append(
            f"  best Lamina {v.lamina.compute}+{v.lamina.attention} vs best homogeneous {v.homogeneous.compute}"
        )
        lines.append(f"  why: {v.why}")
    if v.afd is not None:  # AFD rows hold the expert pool as `compute`
        afd = v.afd
        lines.append(
            f"  best AFD: attention {afd.attention} + experts {afd.compute}, m={afd.pipeline_batches}"
        )
    if v.break_even is not None:
        device, price = v.break_even
        listed = result.catalog_price(device)
        now = f" (the set's price: {listed:,.2f})" if listed is not None else ""
        text = (
            f"{device} at {price:,.2f} USD/h{now}"
            if price > 0
            else f"none (even a free {device} would not pay){now}"
        )
        lines.append(f"  break-even price of the memory device: {text}")
    if v.sensitivity:
        ratios = "; ".join(f"{mix} {tpu:,.0f}" for mix, tpu in v.sensitivity[:6])
        lines.append(f"  tokens per USD of that device pair by compute:memory counts: {ratios}")
    if v.link_gbps is not None:
        lines.append(f"  link Lamina needs: {v.link_gbps:,.0f} Gb/s at its peak iteration")
    return lines


def _row_line(label: str | None, row: PointRow) -> str:
    cap = row.settings.get("max_batch") or "-"
    first = "|" if label is None else f"| {label} |"
    return (
        f"{first} {row.system} | {row.compute} | {row.attention or '-'} | {row.pipeline_batches} | {cap} "
        f"| {row.value('throughput_tok_per_s'):,.0f} | {row.value('mean_batch_size'):.0f} "
        f"| {row.value('tbt_p99_ms'):.1f} | {row.value('cost_usd_per_hour'):.2f} | {row.value('tokens_per_usd'):,.0f} |"
    )


def _search_sources(result: SearchResult) -> str:
    seen = sorted({f"{c.result.source}, profile {c.result.profile}" for c in result.ranked})
    return "; ".join(seen) or "n/a"
