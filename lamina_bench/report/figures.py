"""Figure specs of the report: plain plotly.js JSON ({"data": [...], "layout": {...}}), no plotly import.

Each builder returns a `Figure` (spec, its source label, a note) or a `Missing` (the reason the part has
nothing to draw), so a part without data says why instead of drawing empty axes. Building dicts keeps
the report independent of the plotly Python package (the GPU machine has none); tests validate every
spec with plotly.graph_objects.Figure where plotly is installed.

Text in figures avoids "$": plotly.js treats text between two "$" signs as LaTeX (MathJax), which the
offline report does not ship; dollars are written "USD".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lamina_bench.model.verdict import frontier
from lamina_bench.report.data import (
    TIME_PARTS,
    batch_x,
    config_label,
    is_measured,
    link_gbps,
    mix_label,
    nic_line_rate,
    pareto_front,
    pool_times,
    source_label,
)
from lamina_bench.results.row import PointRow

BREAKDOWN_MAX_ROWS = 24  # more rows than this: only each system's frontier rows get bars
TELEMETRY_MAX_POINTS = 1500  # per device and metric; more samples are thinned (the figure says so)
# Colours: blues for the homogeneous baseline, reds/oranges for Lamina; one shade per device mix.
_SHADES = {
    "homogeneous": ("#1f77b4", "#6baed6", "#08519c", "#17becf", "#4292c6", "#2171b5"),
    "lamina": ("#d62728", "#ff7f0e", "#a50f15", "#e377c2", "#fd8d3c", "#8c564b"),
}
OTHER_COLORS = ("#2ca02c", "#9467bd", "#7f7f7f", "#bcbd22")
_FRONTIER = {"homogeneous": "#08306b", "lamina": "#67000d"}  # darkest shade of each system
DASHES = ("solid", "dash", "dot", "dashdot", "longdash")  # one per run
_PART_COLORS = {
    "dense_ms": "#1f77b4",
    "attention_ms": "#ff7f0e",
    "network_ms": "#2ca02c",
    "idle_ms": "#c7c7c7",
}
_PART_NAMES = {"dense_ms": "dense", "attention_ms": "attention", "network_ms": "network", "idle_ms": "idle"}


@dataclass(frozen=True, eq=False)
class Figure:
    """A drawable figure: the plotly.js spec, where its numbers come from, and a note shown under it."""

    title: str
    source: str  # e.g. "measured, modeled" (the rows' sources) or "derived"
    spec: dict[str, Any]
    notes: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Missing:
    """A figure with nothing to draw, and why."""

    title: str
    reason: str


def base_layout(title: str, source: str, height: int = 420, **extra: Any) -> dict[str, Any]:
    return {
        "title": {"text": f"{title}<br><span style='font-size:12px'>source: {source}</span>", "x": 0.01},
        "height": height,
        "margin": {"t": 70, "b": 60, "l": 70, "r": 20},
        "legend": {"font": {"size": 11}},
        "hovermode": "closest",
        **extra,
    }


def axis(title: str, **extra: Any) -> dict[str, Any]:
    return {"title": {"text": title}, "zeroline": False, **extra}


class Styles:
    """Stable colour per (system, mix), dash per run, filled markers for measured, open for modeled."""

    def __init__(self, runs: Sequence[str]) -> None:
        self._runs = list(runs)
        self._colors: dict[tuple[str, str], str] = {}

    def color(self, system: str, mix: str) -> str:
        key = (system, mix)
        if key not in self._colors:
            shades = _SHADES.get(system, OTHER_COLORS)
            used = sum(1 for s, _ in self._colors if s == system)
            self._colors[key] = shades[used % len(shades)]
        return self._colors[key]

    def line(self, row: PointRow) -> dict[str, Any]:
        dash = DASHES[self._runs.index(row.run_id) % len(DASHES)] if row.run_id in self._runs else "solid"
        return {"color": self.color(row.system or "", mix_label(row)), "dash": dash}

    def marker(self, row: PointRow) -> dict[str, Any]:
        symbol = "diamond" if row.system == "lamina" else "circle"
        return {
            "color": self.color(row.system or "", mix_label(row)),
            "size": 9,
            "symbol": symbol if is_measured(row) else f"{symbol}-open",
            "line": {"width": 2},
        }

    def name(self, row: PointRow, text: str) -> str:
        prefix = f"{row.run_id} · " if len(self._runs) > 1 else ""
        return f"{prefix}{text} ({row.source})"


def group_rows(rows: Iterable[PointRow], *keys: Any) -> dict[tuple, list[PointRow]]:
    groups: dict[tuple, list[PointRow]] = {}
    for row in rows:
        groups.setdefault(tuple(k(row) if callable(k) else getattr(row, k) for k in keys), []).append(row)
    return groups


def _frontier_rows(rows: Sequence[PointRow]) -> list[PointRow]:
    """Each system's rows on the frontier of tokens per USD against TBT p99."""
    priced = [r for r in rows if r.value("tbt_p99_ms") is not None and r.value("tokens_per_usd") is not None]
    return [
        r for system in ("homogeneous", "lamina") for r in frontier([p for p in priced if p.system == system])
    ]


def _hover(row: PointRow) -> str:
    return f"{config_label(row)}<br>{row.source} · run {row.run_id}"


# ---- 2. throughput and tokens per USD against batch size --------------------------------------------


def batch_figure(rows: Sequence[PointRow], model: str, runs: Sequence[str]) -> Figure | Missing:
    """Two panels: throughput and tokens per USD against batch size, one line per system and mix."""
    title = f"{model}: throughput and tokens per USD against batch size"
    rows = [r for r in rows if batch_x(r) is not None and r.value("throughput_tok_per_s") is not None]
    if not rows:
        return Missing(title, "no row of this model has both a batch size and a throughput")
    styles = Styles(runs)
    priced = [r for r in rows if r.value("tokens_per_usd") is not None]
    two = bool(priced)
    data = []
    for key, group in sorted(group_rows(rows, "run_id", "source", "system", mix_label).items(), key=str):
        group = sorted(group, key=batch_x)
        first = group[0]
        name = styles.name(first, f"{first.system} {mix_label(first)}")
        common = {
            "type": "scatter",
            "mode": "lines+markers",
            "name": name,
            "legendgroup": str(key),
            "line": styles.line(first),
            "marker": styles.marker(first),
            "x": [batch_x(r) for r in group],
            "text": [_hover(r) for r in group],
        }
        data.append(
            {
                **common,
                "y": [r.value("throughput_tok_per_s") for r in group],
                "hovertemplate": "%{text}<br>batch %{x:.4g}<br>%{y:,.4g} tok/s<extra></extra>",
            }
        )
        if two:
            data.append(
                {
                    **common,
                    "y": [r.value("tokens_per_usd") for r in group],
                    "xaxis": "x2",
                    "yaxis": "y2",
                    "showlegend": False,
                    "hovertemplate": "%{text}<br>batch %{x:.4g}<br>%{y:,.4g} tokens/USD<extra></extra>",
                }
            )
    configured = any(r.batch_size is not None for r in rows)
    simulated = any(r.batch_size is None for r in rows)
    x_title = {(True, False): "batch size (configured)", (False, True): "mean batch size (simulated)"}.get(
        (configured, simulated), "batch size (configured; trace rows: mean batch)"
    )
    layout = base_layout(
        title,
        source_label(rows),
        xaxis=axis(x_title, domain=[0, 0.46] if two else [0, 1]),
        yaxis=axis("throughput (tok/s)", rangemode="tozero"),
    )
    notes = []
    if two:
        layout.update(
            xaxis2=axis(x_title, domain=[0.56, 1], anchor="y2"),
            yaxis2=axis("tokens per USD", anchor="x2", rangemode="tozero"),
        )
    else:
        notes.append(
            "Tokens per USD not drawn: no row of this model has a price "
            f"({', '.join(sorted({mix_label(r) for r in rows}))} have no usd_per_hour in the catalog)."
        )
    if simulated:
        notes.append("Trace rows (modeled) have no configured batch: their x is the simulated mean batch.")
    return Figure(title, source_label(rows), {"data": data, "layout": layout}, tuple(notes))


# ---- 3. Pareto frontier of tokens per USD against TBT ---------------------------------------------


def _frontier_figure(
    rows: Sequence[PointRow], title: str, runs: Sequence[str], x_of, x_title: str, lower_x_better: bool
) -> Figure | Missing:
    """Every configuration as a point (x_of(row), tokens per USD); the frontier of each system as a line."""
    rows = [r for r in rows if x_of(r) is not None and r.value("tokens_per_usd") is not None]
    if not rows:
        return Missing(title, "no row of this model and workload has both a TBT and a price (tokens per USD)")
    styles = Styles(runs)
    data = []
    for (run, system), group in sorted(group_rows(rows, "run_id", "system").items(), key=str):
        for _key, points in sorted(group_rows(group, "source", mix_label).items(), key=str):
            first = points[0]
            data.append(
                {
                    "type": "scatter",
                    "mode": "markers",
                    "marker": styles.marker(first),
                    "name": styles.name(first, f"{system} {mix_label(first)}"),
                    "x": [x_of(r) for r in points],
                    "y": [r.value("tokens_per_usd") for r in points],
                    "text": [_hover(r) for r in points],
                    "hovertemplate": "%{text}<br>x %{x:.4g}<br>%{y:,.4g} tokens/USD<extra></extra>",
                }
            )
        sign = 1.0 if lower_x_better else -1.0
        coords = [(sign * x_of(r), r.value("tokens_per_usd")) for r in group]
        front = [group[i] for i in pareto_front(coords)]
        prefix = f"{run} · " if len(runs) > 1 else ""
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": f"{prefix}frontier: {system}",
                "line": {**styles.line(front[0]), "color": _FRONTIER.get(system, "#333333"), "width": 1.5},
                "x": [x_of(r) for r in front],
                "y": [r.value("tokens_per_usd") for r in front],
                "hoverinfo": "skip",
            }
        )
    layout = base_layout(
        title,
        source_label(rows),
        height=440,
        xaxis=axis(x_title),
        yaxis=axis("tokens per USD, higher = cheaper", rangemode="tozero"),
    )
    note = (
        "One model and one workload. A point is on its system's frontier when no configuration of that "
        "system is both more interactive and cheaper (more tokens per USD)."
    )
    return Figure(title, source_label(rows), {"data": data, "layout": layout}, (note,))


def pareto_figure(rows: Sequence[PointRow], label: str, runs: Sequence[str]) -> Figure | Missing:
    """Tokens per USD against TBT p99, with each system's Pareto frontier."""
    return _frontier_figure(rows, f"{label}: tokens per USD against TBT p99 (Pareto frontier per system)", runs,
                            lambda r: r.value("tbt_p99_ms"), "TBT p99 (ms), lower = more interactive", True)  # fmt: skip


def interactivity_figure(rows: Sequence[PointRow], label: str, runs: Sequence[str]) -> Figure | Missing:
    """Tokens per USD against interactivity (tokens/s per user = 1000 / TBT p50 ms), with frontiers."""

    def interactivity(row: PointRow) -> float | None:
        tbt = row.value("tbt_p50_ms")
        return None if not tbt else 1000.0 / tbt

    title = f"{label}: tokens per USD against interactivity (Pareto frontier per system)"
    return _frontier_figure(
        rows,
        title,
        runs,
        interactivity,
        "tokens/s per user (1000 / TBT p50), higher = more interactive",
        False,
    )


# ---- 4. time per iteration by pool; link bandwidth against the NIC --------------------------------


def breakdown_figure(rows: Sequence[PointRow], model: str, runs: Sequence[str]) -> Figure | Missing:
    """Stacked bars: dense, attention, network and idle ms per decode iteration, one bar per row and pool
    (for more than BREAKDOWN_MAX_ROWS rows, the rows on each system's tokens-per-USD frontier)."""
    title = f"{model}: time per decode iteration by pool"
    thinned = len(rows) > BREAKDOWN_MAX_ROWS
    if thinned:
        rows = _frontier_rows(rows)
    labelled = []
    for row in rows:
        prefix = f"{row.run_id} · " if len(runs) > 1 else ""
        for pool, parts in pool_times(row).items():
            labelled.append((f"{prefix}{config_label(row)} ({row.source}) | {pool}", parts, row))
    if not labelled:
        return Missing(title, "no row of this model records dense/attention/network/idle times per iteration")
    data = []
    for part in TIME_PARTS:
        data.append(
            {
                "type": "bar",
                "orientation": "h",
                "name": _PART_NAMES[part],
                "marker": {"color": _PART_COLORS[part]},
                "y": [label for label, _, _ in labelled],
                "x": [parts.get(part) for _, parts, _ in labelled],
                "hovertemplate": f"%{{y}}<br>{_PART_NAMES[part]} %{{x:.4g}} ms<extra></extra>",
            }
        )
    used = [row for _, _, row in labelled]
    height = max(320, 110 + 26 * len(labelled))
    layout = base_layout(
        title,
        source_label(used),
        height=height,
        barmode="stack",
        xaxis=axis("ms per decode iteration"),
        yaxis={"automargin": True, "autorange": "reversed", "type": "category"},
        margin={"t": 70, "b": 50, "l": 20, "r": 20},
        legend={"traceorder": "normal"},
    )
    notes = ["Idle is time the pool waits on the other pool or the link."]
    if thinned:
        notes.append("Only configurations on a frontier of tokens per USD against TBT p99 are drawn.")
    if any("not split" in label for label, _, _ in labelled):
        notes.append("Rows without a per-pool record show the flat per-iteration columns as one bar.")
    return Figure(title, source_label(used), {"data": data, "layout": layout}, tuple(notes))


def bandwidth_figure(rows: Sequence[PointRow], model: str, runs: Sequence[str]) -> Figure | Missing:
    """Link rate a Lamina configuration needs against batch size, with the NIC line rate of each mix."""
    title = f"{model}: link bandwidth needed against batch size (Lamina)"
    lamina = [
        r for r in rows if r.system == "lamina" and batch_x(r) is not None and link_gbps(r)[0] is not None
    ]
    if not lamina:
        return Missing(
            title,
            "no Lamina row of this model records its link traffic (net_peak_gbps or "
            "net_bytes_per_token with a throughput)",
        )
    styles = Styles(runs)
    data = []
    kinds = set()
    for _, group in sorted(group_rows(lamina, "run_id", "source", mix_label).items(), key=str):
        group = sorted(group, key=batch_x)
        first = group[0]
        kind = link_gbps(first)[1]
        kinds.add(kind)
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "line": styles.line(first),
                "marker": styles.marker(first),
                "name": styles.name(first, f"{mix_label(first)} ({kind})"),
                "x": [batch_x(r) for r in group],
                "y": [link_gbps(r)[0] for r in group],
                "text": [_hover(r) for r in group],
                "hovertemplate": "%{text}<br>batch %{x:.4g}<br>%{y:.4g} Gb/s<extra></extra>",
            }
        )
    xs = [batch_x(r) for r in lamina]
    lo, hi = min(xs), max(xs)
    lo, hi = (lo * 0.9, hi * 1.1) if lo == hi else (lo, hi)
    notes, by_rate = [], {}
    for row in lamina:
        mix = f"{row.compute}+{row.attention}"
        rate = nic_line_rate(row)
        if rate.gbps is None:
            notes.append(f"{mix}: {rate.reason}; no line rate drawn.")
        else:
            by_rate.setdefault(rate.gbps, {})[mix] = rate.reason
    notes = list(dict.fromkeys(notes))
    for i, (gbps, mixes) in enumerate(sorted(by_rate.items())):
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": f"NIC line rate {gbps:g} Gb/s: {', '.join(mixes)}",
                "x": [lo, hi],
                "y": [gbps, gbps],
                "hoverinfo": "name",
                "line": {"color": "#555555", "dash": DASHES[1 + i % (len(DASHES) - 1)], "width": 1.5},
            }
        )
        notes += [f"{mix}: line rate {gbps:g} Gb/s = {reason} (derived)." for mix, reason in mixes.items()]
    if "mean" in kinds:
        notes.append(
            "(mean): net_bytes_per_token x throughput x 8 / 1e9, the average rate (derived); "
            "(peak): the highest per-iteration rate the row records."
        )
    layout = base_layout(
        title,
        source_label(lamina),
        xaxis=axis("batch size"),
        yaxis=axis("link bandwidth (Gb/s)", rangemode="tozero"),
    )
    return Figure(
        title, f"{source_label(lamina)}; line rate derived", {"data": data, "layout": layout}, tuple(notes)
    )


__all__ = [
    "Figure",
    "Missing",
    "bandwidth_figure",
    "batch_figure",
    "breakdown_figure",
    "interactivity_figure",
    "pareto_figure",
]
