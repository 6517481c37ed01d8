"""Figures of what was measured: modeled against measured (parity plots) and NVML telemetry timelines.

Plain plotly.js specs like `figures.py`, whose `Figure`, `Missing` and styles they share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from lamina_bench.report.data import Prediction, RunData, config_label, downsample, source_label
from lamina_bench.report.figures import (
    OTHER_COLORS,
    TELEMETRY_MAX_POINTS,
    Figure,
    Missing,
    Styles,
    axis,
    base_layout,
    group_rows,
)

# ---- 5. measured against modeled ----------------------------------------------------------------


def prediction_figure(preds: Sequence[Prediction], runs: Sequence[str]) -> Figure | Missing:
    """Parity plots (modeled against measured) of up to two metrics, with the y = x line."""
    title = "Modeled against measured"
    metrics = [
        m
        for m in ("throughput_tok_per_s", "tbt_mean_ms", "tbt_p50_ms")
        if any(m in p.metrics() for p in preds)
    ][:2]
    if not metrics:
        return Missing(title, "no measured row has a modeled prediction with a common metric")
    styles = Styles(runs)
    data, layout_axes = [], {}
    width = 1 / len(metrics)
    for i, metric in enumerate(metrics):
        suffix = "" if i == 0 else str(i + 1)
        pairs = [p for p in preds if metric in p.metrics()]
        values = [p.measured.value(metric) for p in pairs] + [p.modeled.value(metric) for p in pairs]
        lo, hi = min(values) * 0.8, max(values) * 1.25
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "x": [lo, hi],
                "y": [lo, hi],
                "name": "modeled = measured",
                "line": {"color": "#7f7f7f", "dash": "dot"},
                "hoverinfo": "skip",
                "showlegend": i == 0,
                "xaxis": f"x{suffix}",
                "yaxis": f"y{suffix}",
            }
        )
        for _, group in sorted(
            group_rows(pairs, lambda p: p.measured.run_id, lambda p: p.measured.system).items(), key=str
        ):
            first = group[0].measured
            data.append(
                {
                    "type": "scatter",
                    "mode": "markers",
                    "xaxis": f"x{suffix}",
                    "yaxis": f"y{suffix}",
                    "marker": {**styles.marker(first), "symbol": "x"},
                    "showlegend": i == 0,
                    "legendgroup": f"{first.run_id}{first.system}",
                    "name": (f"{first.run_id} · " if len(runs) > 1 else "") + str(first.system),
                    "x": [p.measured.value(metric) for p in group],
                    "y": [p.modeled.value(metric) for p in group],
                    "text": [
                        f"{config_label(p.measured)}<br>error {p.error_pct(metric):+.1f}%" for p in group
                    ],
                    "hovertemplate": "%{text}<br>measured %{x:.4g}<br>modeled %{y:.4g}<extra></extra>",
                }
            )
        unit = metric.rsplit("_", 1)[-1] if metric.endswith("_ms") else "tok/s"
        name = metric.removesuffix("_ms").removesuffix("_tok_per_s").replace("_", " ")
        domain = [i * width + (0.06 if i else 0), (i + 1) * width - (0.04 if i + 1 < len(metrics) else 0)]
        layout_axes[f"xaxis{suffix}"] = axis(
            f"measured {name} ({unit})", type="log", domain=domain, anchor=f"y{suffix}"
        )
        layout_axes[f"yaxis{suffix}"] = axis(f"modeled {name} ({unit})", type="log", anchor=f"x{suffix}")
    rows = [p.measured for p in preds] + [p.modeled for p in preds]
    layout = base_layout(title, source_label(rows), height=440, **layout_axes)
    return Figure(
        title,
        f"{source_label(rows)}; error derived",
        {"data": data, "layout": layout},
        ("Log axes; points on the dotted line are predicted exactly.",),
    )


# ---- 6. telemetry --------------------------------------------------------------------------------

_TELEMETRY_PANELS = (
    ("SM busy (%)", ("sm_busy_pct",)),
    ("memory busy (% of time)", ("mem_busy_pct",)),
    ("power (W)", ("power_w",)),
    ("clocks (MHz)", ("sm_clock_mhz", "mem_clock_mhz")),
)


def telemetry_figure(run: RunData, runs: Sequence[str]) -> Figure | Missing:
    """Four stacked panels (SM busy, memory busy, power, clocks) over time, one line per device."""
    title = f"Telemetry timelines, run {run.label}"
    frame = run.telemetry
    frame = frame[frame["t_mono_s"].notna()] if len(frame) else frame
    if not len(frame):
        return Missing(title, "no telemetry samples")
    t0 = float(frame["t_mono_s"].min())
    data, layout_axes, notes = [], {}, []
    gap = 0.04
    height = (1 - gap * (len(_TELEMETRY_PANELS) - 1)) / len(_TELEMETRY_PANELS)
    devices = sorted(int(d) for d in frame["device_index"].dropna().unique())
    for i, (label, columns) in enumerate(_TELEMETRY_PANELS):
        suffix = "" if i == 0 else str(i + 1)
        top = 1 - i * (height + gap)
        drawn = False
        for device in devices:
            samples = frame[frame["device_index"] == device].sort_values("t_mono_s")
            thinned = downsample(samples, TELEMETRY_MAX_POINTS)
            if len(thinned) < len(samples) and i == 0:
                notes.append(
                    f"device {device}: {len(samples)} samples thinned to {len(thinned)} for drawing."
                )
            for column in columns:
                values = pd.to_numeric(thinned[column], errors="coerce")
                if values.notna().sum() == 0:
                    continue
                drawn = True
                name = f"GPU {device}" + (
                    f" {column.removesuffix('_mhz').replace('_', ' ')}" if len(columns) > 1 else ""
                )
                data.append(
                    {
                        "type": "scatter",
                        "mode": "lines",
                        "name": name,
                        "legendgroup": f"dev{device}",
                        "showlegend": i == 0 or len(columns) > 1,
                        "xaxis": f"x{suffix}",
                        "yaxis": f"y{suffix}",
                        "x": [round(float(t) - t0, 4) for t in thinned["t_mono_s"]],
                        "y": [_finite_or_none(v) for v in values],
                        "line": {
                            "color": OTHER_COLORS[device % len(OTHER_COLORS)],
                            "dash": "dot" if column == "mem_clock_mhz" else "solid",
                        },
                    }
                )
        layout_axes[f"yaxis{suffix}"] = axis(label, domain=[max(0.0, top - height), top], anchor=f"x{suffix}")
        layout_axes[f"xaxis{suffix}"] = axis(
            "seconds since the first sample" if i == 3 else "",
            anchor=f"y{suffix}",
            matches="x" if i else None,
            showticklabels=i == 3,
        )
        if not drawn:
            notes.append(f"{label}: not reported by any device (NVML query unsupported here).")
    shapes = _window_shapes(run, frame, t0)
    if shapes:
        notes.append(
            "Shaded: the window of each measured point, green when its telemetry verdict is valid, "
            "red when invalid (the verdicts are in the table below)."
        )
    layout = base_layout(title, "measured", height=820, shapes=shapes, **layout_axes)
    return Figure(title, "measured", {"data": data, "layout": layout}, tuple(notes))


def _window_shapes(run: RunData, frame: pd.DataFrame, t0: float) -> list[dict[str, Any]]:
    """A shaded band over the samples of each point's window, coloured by the point's verdict."""
    verdicts = {r.point_id: r.telemetry_verdict for r in run.rows}
    inside = frame[frame["point_id"].notna()]
    shapes = []
    windows = inside.groupby("point_id")["t_mono_s"].agg(["min", "max"]).sort_values("min")
    for pid, (begin, end) in windows.iterrows():
        valid = verdicts.get(pid) == "valid"
        shapes.append(
            {
                "type": "rect",
                "xref": "x",
                "yref": "paper",
                "x0": float(begin) - t0,
                "x1": float(end) - t0,
                "y0": 0,
                "y1": 1,
                "layer": "below",
                "line": {"width": 0},
                "fillcolor": "#2ca02c" if valid else "#d62728",
                "opacity": 0.08,
            }
        )
    return shapes


def _finite_or_none(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


__all__ = ["prediction_figure", "telemetry_figure"]
