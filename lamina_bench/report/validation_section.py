"""The report's section on a `lamina-bench validate` run: the GPU operator model against public measurements.

A validate run (results/validation-runs/<run_id>/, manifest spec name "validate") stores each public
measurement as a `measured` row and the operator model's prediction of it as a `modeled` (or `derived`)
row that `predicts` it (validate/rows.py). This section turns the pairs back into judgements and shows
the same figures `lamina-bench validate` prints (validate/figures.py: median, p90 and worst |error| per
set, kind and GPU), a predicted-against-measured figure (log-log) per kind, and the files the rows come
from. Given only sweep runs, it says how to get one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lamina_bench.report.data import RunData, predictions
from lamina_bench.report.figures import OTHER_COLORS, Figure, Missing, axis, base_layout
from lamina_bench.report.page import Document, Section, esc, fmt_num, note, table
from lamina_bench.validate.figures import OPERATOR, figures
from lamina_bench.validate.predict import OPERATOR_KINDS, Judged

TITLE = "Model error against public GPU measurements"
KINDS = (OPERATOR, *OPERATOR_KINDS, "e2e")  # table order
KIND_LABELS = {
    OPERATOR: "operator (pooled)",
    "dense_layer": "dense layer",
    "gemm": "GEMM",
    "decode_attention": "decode attention",
    "allreduce": "all-reduce",
    "p2p": "point-to-point",
    "e2e": "end-to-end TPOT",
}
GPU_COLORS = ("#1f77b4", "#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#e377c2", *OTHER_COLORS)
# Settings of a stored row that are provenance, not the conditions of the measurement.
_META = {"validation_file", "validation_kind", "split", "gpu", "source", "timing", "implementation", "statistic",
         "duplicate", "kernel"}  # fmt: skip
HOW_TO = (
    "This report has no validate run. <code>lamina-bench validate</code> predicts every public "
    "measurement of <code>results/validation/</code> with the calibrated GPU operator model and stores the "
    "rows as a run in <code>results/validation-runs/&lt;run_id&gt;/</code>; then "
    "<code>lamina-bench report results/validation-runs/&lt;run_id&gt;</code> draws this section, or give it "
    "together with a sweep: <code>lamina-bench report results/&lt;run_id&gt; "
    "results/validation-runs/&lt;run_id&gt;</code>."
)


def is_validation_run(run: RunData) -> bool:
    """Whether `run` was written by `lamina-bench validate` (its manifest spec is named "validate")."""
    spec = run.manifest.get("spec")
    return isinstance(spec, Mapping) and spec.get("name") == "validate"


def judgements(run: RunData) -> list[Judged]:
    """The run's (measured, modeled) pairs as the judgements `lamina-bench validate` computed."""
    out = []
    for p in predictions(run.rows):
        s = p.measured.settings
        metric = next(iter(p.measured.metrics), None)
        if "validation_kind" not in s or metric is None or p.modeled.value(metric) is None:
            continue
        cond = {k: v for k, v in s.items() if k not in _META}
        if p.measured.model is not None:  # a row column, not a setting
            cond["model"] = p.measured.model
        out.append(
            Judged(
                str(s["validation_kind"]), str(s.get("split", "validation")), str(s.get("gpu", "?")),
                str(s.get("validation_file", "?")), str(s.get("source", "")), cond, float(p.measured.value(metric)),
                float(p.modeled.value(metric)), metric=metric, model_source=p.modeled.source or "modeled",
                model_name=p.modeled.profile or "",
            )
        )  # fmt: skip
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _worst(j: Judged) -> str:
    cond = ", ".join(f"{k}={v}" for k, v in j.conditions.items())
    unit = "ms" if j.metric.endswith("_ms") else "us"
    return (
        f"{100 * j.error:+.0f}% ({esc(cond)}; measured {fmt_num(j.measured)} {unit}, predicted "
        f"{fmt_num(j.predicted)} {unit}; <code>{esc(j.file)}</code>)"
    )


def figures_table(judged: Sequence[Judged], split: str) -> str:
    """Median, p90 and worst |error| per kind (all GPUs, then each GPU) of one split."""
    figs = figures(judged)
    body = []
    for kind in KINDS:
        keys = [k for k in figs if k.split("/")[:2] == [split, kind]]
        for key in sorted(keys, key=lambda k: (k.count("/"), k)):
            f, gpu = figs[key], (key.split("/")[2] if key.count("/") == 2 else "all")
            label = KIND_LABELS[kind] if gpu == "all" else ""
            cells = [f"<b>{esc(label)}</b>" if label else "", esc(gpu), str(f.n), _pct(f.median), _pct(f.p90)]
            body.append(cells + [_worst(f.worst)])
    headers = ["kind", "GPU", "rows", "median |error|", "p90 |error|", "worst row"]
    caption = f"{split} rows: error = predicted / measured - 1 (derived); |error| over the rows of each group"
    return table(headers, body, caption, [False, False, True, True, True, False])


def parity_figure(judged: Sequence[Judged], kind: str, split: str) -> Figure | Missing:
    """Predicted against measured on log axes, one colour per GPU, with the y = x line."""
    title = f"{KIND_LABELS.get(kind, kind)}: predicted against measured ({split} rows)"
    rows = [j for j in judged if j.kind == kind and j.split == split]
    if not rows:
        return Missing(title, f"the run holds no {split} row of this kind")
    unit = "ms" if rows[0].metric.endswith("_ms") else "us"
    values = [v for j in rows for v in (j.measured, j.predicted)]
    lo, hi = min(values) / 1.5, max(values) * 1.5
    data: list[dict[str, Any]] = [
        {"type": "scatter", "mode": "lines", "x": [lo, hi], "y": [lo, hi], "name": "predicted = measured",
         "line": {"color": "#7f7f7f", "dash": "dot"}, "hoverinfo": "skip"},
    ]  # fmt: skip
    for i, gpu in enumerate(sorted({j.gpu for j in rows})):
        group = [j for j in rows if j.gpu == gpu]
        text = [
            f"{j.file}<br>{', '.join(f'{k}={v}' for k, v in j.conditions.items())}<br>error {100 * j.error:+.1f}%"
            for j in group
        ]
        data.append(
            {"type": "scatter", "mode": "markers", "name": f"{gpu} ({len(group)})",
             "x": [j.measured for j in group], "y": [j.predicted for j in group], "text": text,
             "marker": {"color": GPU_COLORS[i % len(GPU_COLORS)], "size": 6, "opacity": 0.7},
             "hovertemplate": f"%{{text}}<br>measured %{{x:.4g}} {unit}<br>predicted %{{y:.4g}} {unit}<extra></extra>"}
        )  # fmt: skip
    sources = sorted({j.model_source for j in rows})
    source = f"measured (public sources) against {', '.join(sources)}; error derived"
    layout = base_layout(
        title, source, height=460,
        xaxis=axis(f"measured ({unit})", type="log"), yaxis=axis(f"predicted ({unit})", type="log"),
    )  # fmt: skip
    notes = ("Log axes; a point on the dotted line is predicted exactly. Hover a point for its source file.",)
    return Figure(title, source, {"data": data, "layout": layout}, notes)


def _files_table(run: RunData) -> str:
    files = (run.manifest.get("spec") or {}).get("files") or {}
    if not files:
        return ""
    body = [
        [f"<code>{esc(fid)}</code>", esc(f.get("kind")), esc(f.get("split")), esc(f.get("gpu")), esc(f.get("source"))]
        for fid, f in sorted(files.items(), key=lambda kv: (kv[1].get("split", ""), kv[0]))
    ]  # fmt: skip
    return (
        f"<details><summary>the {len(body)} files of the run and their sources</summary>"
        + table(["file", "kind", "split", "GPU", "source (repository + path + commit, or document)"], body)
        + "</details>"
    )


def _run_body(run: RunData, doc: Document) -> str:
    judged = judgements(run)
    if not judged:
        return note(f"Run {esc(run.label)} is a validate run without predicted rows.")
    spec = run.manifest.get("spec") or {}
    cal_files = spec.get("calibration_files") or []
    html = [
        f"<h3>run {esc(run.label)}</h3>",
        f"<p>Operator model <code>{esc(judged[0].model_name)}</code> (calibration of "
        f"{esc(spec.get('calibration_date', 'unknown date'))}, fitted on {len(cal_files)} calibration files "
        "only); every row is a public measurement (measured on the named GPU by its source) and its "
        "prediction (modeled from the GPU's own calibrated constants, or derived from another GPU's by "
        "datasheet ratios). Validation rows were never seen by the fit.</p>",
    ]
    splits = [s for s in ("validation", "calibration") if any(j.split == s for j in judged)]
    for split in splits:
        block = [figures_table(judged, split)]
        kinds = [k for k in KINDS[1:] if any(j.kind == k and j.split == split for j in judged)]
        block += [doc.figure(parity_figure(judged, kind, split)) for kind in kinds]
        if split == "validation":
            html += block
        else:  # the fit's own error: shown folded, it is not the model's accuracy
            html.append("<details><summary>calibration rows (what the constants were fitted on)</summary>"
                        + "".join(block) + "</details>")  # fmt: skip
    left_out = spec.get("left_out") or []
    if left_out:
        html.append(f"<p>{len(left_out)} end-to-end rows left out (the decode-only simulator cannot predict "
                    f"them; reasons in the run's manifest).</p>")  # fmt: skip
    html.append(_files_table(run))
    return "".join(html)


def validation_section(runs: Sequence[RunData], doc: Document) -> Section:
    """The operator model's error on the public measurements of every validate run given (module doc)."""
    runs = [r for r in runs if is_validation_run(r)]
    if not runs:
        return Section("model-error", TITLE, "no validate run", note(HOW_TO))
    body = "".join(_run_body(run, doc) for run in runs)
    return Section("model-error", TITLE, "measured (public sources), modeled, derived; error derived", body)


__all__ = ["is_validation_run", "judgements", "validation_section"]
