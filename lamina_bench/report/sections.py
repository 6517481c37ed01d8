"""The report's sections: a runs overview and seven numbered parts, as HTML with registered figures.

Each `*_section` function takes the loaded runs and the page `Document` and returns one `Section`; a part
without data says why in place of its figure or table.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from lamina_bench.report import figures as figs
from lamina_bench.report.data import (
    HEADLINE_METRICS,
    RunData,
    config_label,
    failed_rows,
    group_label,
    headline_pairs,
    is_measured,
    mix_label,
    plot_rows,
    predictions,
    run_changes,
    source_label,
    telemetry_reason,
    workload_label,
)
from lamina_bench.report.figures_measured import prediction_figure, telemetry_figure
from lamina_bench.report.page import Document, Section, esc, fmt_num, note, source_badges, table
from lamina_bench.report.validation_section import is_validation_run, validation_section
from lamina_bench.report.verdict_section import verdict_section
from lamina_bench.results.metrics import DOWN, METRICS, UP
from lamina_bench.results.row import PointRow

_APPENDIX_FILE_LIMIT_BYTES = 200_000  # profile files larger than this are named, not embedded


def _all_rows(runs: Sequence[RunData]) -> list[PointRow]:
    """The rows of every run but validate runs (their public GPU measurements have their own section)."""
    return [row for run in runs if not is_validation_run(run) for row in run.rows]


def _groups(rows: Sequence[PointRow]) -> dict[str, list[PointRow]]:
    """Rows by model and workload (group_label), in first-seen order."""
    groups: dict[str, list[PointRow]] = {}
    for row in rows:
        groups.setdefault(group_label(row), []).append(row)
    return groups


def _per_workload(
    runs: Sequence[RunData],
    doc: Document,
    builders: Sequence[Callable[[list, str, list], figs.Figure | figs.Missing]],
) -> tuple[str, str]:
    """(HTML, sources) of one figure per builder per model and workload, over the ok rows of every run."""
    rows = plot_rows(_all_rows(runs))
    labels = [r.label for r in runs]
    if not rows:
        stored = len(_all_rows(runs))
        why = f"all {stored} stored points failed (listed above)" if stored else "no point is stored yet"
        return note(f"Nothing to draw: {why}."), "no rows"
    parts = []
    for label, group in _groups(rows).items():
        parts.append(f"<h3>{esc(label)}</h3>")
        parts += [doc.figure(build(group, label, labels)) for build in builders]
    return "".join(parts), source_label(rows)


# ---- overview -------------------------------------------------------------------------------------


def runs_section(runs: Sequence[RunData], doc: Document) -> Section:
    """Each run's identity and point counts; failed points with their errors; changes between runs."""
    headers = ["run", "status", "started (UTC)", "git commit", "host", "points ok", "points failed", "folder"]
    body = []
    for run in runs:
        git = run.manifest.get("git") or {}
        commit = (git.get("commit") or "n/a")[:12] + (" (dirty)" if git.get("dirty") else "")
        ok = sum(r.status == "ok" for r in run.rows)
        body.append(
            [
                esc(run.label),
                esc(run.manifest.get("status")),
                esc(run.manifest.get("start_time")),
                f"<code>{esc(commit)}</code>",
                esc(run.manifest.get("host")),
                str(ok),
                str(len(run.rows) - ok),
                f"<code>{esc(run.path)}</code>",
            ]
        )
    html = [table(headers, body)]
    failed = failed_rows(_all_rows(runs))
    if failed:
        rows = [
            [
                esc(r.run_id),
                f"<code>{esc(r.point_id)}</code>",
                source_badges(r.source or ""),
                esc(config_label(r)),
                esc(r.error),
            ]
            for r in failed
        ]
        html.append(f"<h3>Failed points ({len(failed)})</h3>")
        html.append(
            table(
                ["run", "point", "source", "configuration", "error"],
                rows,
                "Failed points are results too: each is stored with its error, never dropped.",
            )
        )
    if len(runs) > 1:
        html.append(_changes_table(runs))
    return Section("runs", "Runs in this report", "run metadata", "".join(html))


def _changes_table(runs: Sequence[RunData]) -> str:
    changes = run_changes(runs)
    title = f"<h3>Changes against the first run ({esc(runs[0].label)})</h3>"
    if not changes:
        return title + note(
            "No point (same configuration, same point_id) is ok in the first run and a later one."
        )
    body = []
    for c in changes:
        cells = [esc(c.head.run_id), esc(config_label(c.head)), source_badges(c.head.source or "")]
        for metric in ("throughput_tok_per_s", "tbt_mean_ms", "tokens_per_usd"):
            pct = c.change_pct(metric)
            cells.append(
                f"{fmt_num(c.base.value(metric))} → {fmt_num(c.head.value(metric))}"
                + ("" if pct is None else f" ({pct:+.1f}%)")
            )
        body.append(cells)
    headers = ["run", "configuration", "source", "throughput (tok/s)", "TBT mean (ms)", "tokens per USD"]
    return title + table(headers, body, "first run → this run (change, derived)", [False] * 3 + [True] * 3)


# ---- 1. headline ----------------------------------------------------------------------------------


def _ratio_cell(pair, metric: str) -> str:
    a, b, ratio = pair.lamina.value(metric), pair.baseline.value(metric), pair.ratio(metric)
    if ratio is None:
        return f"{fmt_num(a)} / {fmt_num(b)}"
    sign = {UP: 1, DOWN: -1}.get(METRICS[metric].better, 0)
    better = (ratio - 1) * sign
    css = "better" if better > 0.005 else "worse" if better < -0.005 else ""
    return f"{fmt_num(a)} / {fmt_num(b)}<br><span class='{css}'>×{ratio:.3g}</span>"


def headline_section(runs: Sequence[RunData], doc: Document) -> Section:
    """Per model, per workload: every Lamina row against its homogeneous baseline of about equal cost."""
    pairs, alone = headline_pairs(_all_rows(runs))
    multi = len(runs) > 1
    html = [
        "<p>Each Lamina configuration (without a batch cap) against the homogeneous configuration of the "
        "same run, model and workload whose price per hour is closest (cells: Lamina / baseline; × = Lamina "
        "÷ baseline, derived; green = better for Lamina).</p>"
    ]
    if not pairs:
        html.append(
            note(
                "No Lamina row has a homogeneous row of the same model and workload to compare with"
                + (
                    f" ({len(alone)} Lamina rows stand alone, listed below)."
                    if alone
                    else ": the runs hold no ok Lamina row."
                )
            )
        )
    headers = (
        (["run"] if multi else [])
        + ["workload", "source", "Lamina", "baseline", "USD/hour"]
        + [METRICS[m].label for m in HEADLINE_METRICS]
    )
    uncapped = [p for p in pairs if "max_batch" not in p.lamina.settings]
    for label in _groups([p.lamina for p in uncapped]):
        body = []
        for p in (p for p in uncapped if group_label(p.lamina) == label):
            src = p.lamina.source, p.baseline.source
            cells = [esc(p.lamina.run_id)] if multi else []
            cells += [
                esc(workload_label(p.lamina)),
                source_badges(src[0]) + ("" if src[0] == src[1] else " / " + source_badges(src[1])),
                esc(mix_label(p.lamina)),
                esc(mix_label(p.baseline)),
                f"{fmt_num(p.lamina.value('cost_usd_per_hour'))} / {fmt_num(p.baseline.value('cost_usd_per_hour'))}",
            ]
            cells += [_ratio_cell(p, m) for m in HEADLINE_METRICS]
            body.append(cells)
        numeric = [False] * (len(headers) - len(HEADLINE_METRICS)) + [True] * len(HEADLINE_METRICS)
        opened = " open" if len(body) <= 12 else ""
        html.append(f"<details{opened}><summary><b>{esc(label)}</b>: {len(body)} Lamina configurations</summary>"
                    + table(headers, body, numeric=numeric) + "</details>")  # fmt: skip
    if alone:
        rows = [[esc(r.run_id), esc(config_label(r)), source_badges(r.source or "")] for r in alone]
        html.append(
            "<h3>Lamina rows without a baseline</h3>" + table(["run", "configuration", "source"], rows)
        )
    used = [p.lamina for p in pairs] + [p.baseline for p in pairs]
    return Section(
        "headline",
        "Every Lamina configuration against the homogeneous one of about equal cost",
        f"{source_label(used)}; ratios derived" if used else "no rows",
        "".join(html),
    )


# ---- 2-4. figures per model -----------------------------------------------------------------------


def batch_section(runs: Sequence[RunData], doc: Document) -> Section:
    html, src = _per_workload(runs, doc, [figs.batch_figure])
    return Section("batch", "Throughput and tokens per dollar against batch size", src, html)


def pareto_section(runs: Sequence[RunData], doc: Document) -> Section:
    html, src = _per_workload(runs, doc, [figs.pareto_figure, figs.interactivity_figure])
    return Section(
        "pareto",
        "Tokens per dollar against TBT and interactivity (Pareto frontiers per model and workload)",
        src,
        html,
    )


def time_section(runs: Sequence[RunData], doc: Document) -> Section:
    html, src = _per_workload(runs, doc, [figs.breakdown_figure, figs.bandwidth_figure])
    return Section("time", "Time per iteration by pool, and the link bandwidth needed", src, html)


# ---- 5. measured against modeled --------------------------------------------------------------------


def prediction_section(runs: Sequence[RunData], doc: Document) -> Section:
    preds = predictions(_all_rows(runs))
    title = "Measured here against modeled (the runtime and the calibration loop on this machine, not GPU performance)"
    if not preds:
        reason = (
            "no modeled row predicts a measured row in these runs (a [[measured]] block with "
            "predict = true adds the predictions)"
        )
        return Section(
            "predictions", title, "no rows", doc.figure(figs.Missing("Modeled against measured", reason))
        )
    html = [doc.figure(prediction_figure(preds, [r.label for r in runs]))]
    multi = len(runs) > 1
    body = []
    for p in preds:
        for metric in p.metrics():
            err = p.error_pct(metric)
            cells = [esc(p.measured.run_id)] if multi else []
            cells += [
                esc(config_label(p.measured)),
                esc(p.modeled.profile),
                esc(metric),
                fmt_num(p.measured.value(metric)),
                fmt_num(p.modeled.value(metric)),
                "n/a" if err is None else f"{err:+.1f}%",
            ]
            body.append(cells)
    headers = (["run"] if multi else []) + [
        "configuration",
        "model profile",
        "metric",
        "measured",
        "modeled",
        "error",
    ]
    numeric = [False] * (len(headers) - 3) + [True] * 3
    html.append(table(headers, body, "error = (modeled − measured) / measured (derived)", numeric))
    rows = [p.measured for p in preds] + [p.modeled for p in preds]
    return Section("predictions", title, f"{source_label(rows)}; error derived", "".join(html))


# ---- 6. telemetry ---------------------------------------------------------------------------------


def telemetry_section(runs: Sequence[RunData], doc: Document) -> Section:
    html, any_samples = [], False
    for run in (r for r in runs if not is_validation_run(r)):  # public measurements: no telemetry here
        html.append(f"<h3>run {esc(run.label)}</h3>")
        reason = telemetry_reason(run)
        if reason is not None:
            html.append(doc.figure(figs.Missing(f"Telemetry timelines, run {run.label}", reason)))
        else:
            any_samples = True
            html.append(doc.figure(telemetry_figure(run, [r.label for r in runs])))
        html.append(_verdict_table(run))
    html.insert(
        0,
        "<p>NVML samples per device. Memory busy is the share of <i>time</i> device memory was "
        "read or written, not a bandwidth. A point's telemetry is valid only when sampling had "
        "no gaps and enough samples.</p>",
    )
    return Section(
        "telemetry",
        "Telemetry per device, with validity verdicts",
        "measured" if any_samples else "no samples",
        "".join(html),
    )


def _verdict_table(run: RunData) -> str:
    measured = [r for r in plot_rows(run.rows) if is_measured(r)]
    if not measured:
        return ""
    body = []
    for r in measured:
        verdict = r.telemetry_verdict or "not recorded"
        css = "better" if verdict == "valid" else "worse"
        body.append(
            [
                esc(config_label(r)),
                f"<span class='{css}'>{esc(verdict)}</span>",
                *(
                    fmt_num(r.value(m))
                    for m in ("sm_busy_pct_mean", "mem_busy_pct_mean", "power_w_mean", "energy_j")
                ),
            ]
        )
    headers = [
        "measured point",
        "telemetry verdict",
        "SM busy mean (%)",
        "memory busy mean (% of time)",
        "power mean (W, all devices)",
        "energy (J)",
    ]
    return table(headers, body, "per measured point (measured)", [False, False, True, True, True, True])


# ---- 7. appendix ----------------------------------------------------------------------------------


def appendix_section(runs: Sequence[RunData], doc: Document) -> Section:
    html = []
    for run in runs:
        manifest = {k: v for k, v in run.manifest.items() if k != "spec"}
        html.append(f"<h3>run {esc(run.label)}</h3>")
        html.append(
            f"<details><summary>manifest.json (without the spec)</summary><pre>"
            f"{esc(json.dumps(manifest, indent=1, sort_keys=True, default=str))}</pre></details>"
        )
        spec = run.manifest.get("spec")
        html.append(
            "<details><summary>sweep spec</summary><pre>"
            f"{esc(json.dumps(spec, indent=1, sort_keys=True, default=str))}</pre></details>"
        )
        html.append(_profiles(run))
        body = [
            [
                f"<code>{esc(r.point_id)}</code>",
                source_badges(r.source or ""),
                esc(r.status),
                esc(config_label(r)),
                esc(r.profile),
                f"<code>{esc(r.repro_command)}</code>",
                esc(r.error),
            ]
            for r in run.rows
        ]
        html.append(
            table(
                ["point", "source", "status", "configuration", "profile", "repro command", "error"],
                body,
                f"every row of run {esc(run.label)} and the command that reproduces it",
            )
        )
        html.append(_metrics_table(run))
    return Section(
        "appendix",
        "Appendix: manifests, specs, repro commands and every metric",
        source_label(_all_rows(runs)),
        "".join(html),
    )


def _metrics_table(run: RunData) -> str:
    """Every registered metric any row of the run has, one column each (label and unit from the registry)."""
    names = [m for m in METRICS if any(m in r.metrics for r in run.rows)]
    if not names:
        return note(f"No row of run {esc(run.label)} has a metric.")
    headers = ["point", "source", *(esc(f"{m} [{METRICS[m].unit}]") for m in names)]
    body = [
        [
            f"<code>{esc(r.point_id)}</code>",
            source_badges(r.source),
            *(fmt_num(r.metrics.get(m)) for m in names),
        ]
        for r in run.rows
    ]
    caption = f"every metric of every row of run {esc(run.label)} (see the metric registry for their meaning)"
    return (
        "<details><summary>all metrics</summary>"
        + table(headers, body, caption, [False, False] + [True] * len(names))
        + "</details>"
    )


def _profiles(run: RunData) -> str:
    """The operator profiles stored in the run folder (what its modeled rows were calibrated from)."""
    out = []
    for path in sorted(run.path.glob("profile-*.json")):
        size = path.stat().st_size
        if size > _APPENDIX_FILE_LIMIT_BYTES:
            out.append(f"<p>profile <code>{esc(path.name)}</code>: {size:,} bytes, not embedded.</p>")
            continue
        out.append(
            f"<details><summary>profile {esc(path.name)} (measured on the run's machine)</summary>"
            f"<pre>{esc(path.read_text(errors='replace'))}</pre></details>"
        )
    return "".join(out)


SECTIONS = (
    verdict_section,
    pareto_section,
    batch_section,
    time_section,
    headline_section,
    runs_section,
    prediction_section,
    telemetry_section,
    validation_section,
    appendix_section,
)

__all__ = ["SECTIONS"]
