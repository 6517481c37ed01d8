"""History view: every metric of every point over commits, as one self-contained HTML file.

Input: run folders and baseline folders (both hold manifest.json and points), or folders above them
(every folder below with a manifest.json is taken, e.g. `results/`). Each run is one position on the
x axis, ordered by the manifest's start time and labelled with its git commit (`*` = dirty tree); each
point (matched by point_id across runs) is one line; 95% CIs of aggregate rows are error bars.

The page embeds plotly.js once (no CDN, no network when opened); plotly is imported only here, so the
rest of the package runs without it (the GPU machine has no plotly).
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lamina_bench.compare.sides import comparable_rows, point_label
from lamina_bench.errors import UserInputError
from lamina_bench.results.files import atomic_write_bytes
from lamina_bench.results.metrics import DOWN, METRICS, UP
from lamina_bench.results.paths import check_output_file
from lamina_bench.results.row import PointRow
from lamina_bench.results.store import RunStore

_ROW_COLUMNS = ("run", "point_id", "point", "metric", "value", "ci_low", "ci_high")


@dataclass(frozen=True)
class HistoryRun:
    path: str
    run_id: str
    commit: str | None
    dirty: bool | None
    start_time: str | None
    label: str  # x-axis category: short commit, '*' if dirty, start time to the minute


def find_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """The given run/baseline folders, and every folder with a manifest.json below any other folder."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if (path / "manifest.json").is_file():
            found.append(path)
            continue
        if not path.is_dir():
            raise UserInputError(f"{path} is not a folder; give run folders, baseline folders or results/")
        below = sorted(m.parent for m in path.rglob("manifest.json") if not _hidden(m.relative_to(path)))
        if not below:
            raise UserInputError(f"{path} holds no run folder (no manifest.json below it)")
        found += below
    return found


def _hidden(relative: Path) -> bool:
    """Dot-folders hold half-written baselines (compare.baselines.update_baseline staging)."""
    return any(part.startswith(".") for part in relative.parts)


def _run_of(store: RunStore) -> HistoryRun:
    git = store.manifest.get("git") or {}
    commit, dirty = git.get("commit"), git.get("dirty")
    start = store.manifest.get("start_time")
    when = (start or "no time")[:16].replace("T", " ")
    label = f"{(commit or 'no-commit')[:8]}{'*' if dirty else ''} {when}"
    return HistoryRun(str(store.path), store.run_id, commit, dirty, start, label)


def _metric_rows(run: HistoryRun, points: Sequence[PointRow]) -> list[dict[str, Any]]:
    rows = []
    records, _ = comparable_rows(points)  # aggregate rows stand for their single repeats
    for rec in records:
        if not rec.ok:
            continue
        for metric, value in rec.metrics.items():
            ci = rec.ci.get(metric, (None, None))
            rows.append(
                dict(
                    zip(
                        _ROW_COLUMNS,
                        (run.label, rec.point_id, point_label(rec), metric, value, *ci),
                        strict=True,
                    )
                )
            )
    return rows


def load_history(paths: Sequence[str | Path]) -> tuple[list[HistoryRun], pd.DataFrame]:
    """Runs in start-time order (a run reached twice, e.g. as itself and as a baseline, counted once)
    and the long table run, point_id, point, metric, value, ci_low, ci_high of their ok points."""
    stores = [RunStore.open(p) for p in find_run_dirs(paths)]
    seen, runs = set(), []
    for store in sorted(stores, key=lambda s: (s.manifest.get("start_time") or "", str(s.path))):
        run = _run_of(store)
        if (run.run_id, run.commit) in seen:
            continue
        seen.add((run.run_id, run.commit))
        if run.label in {r.label for r, _ in runs}:  # two runs in the same minute at the same commit
            run = dataclasses.replace(run, label=f"{run.label} ({run.run_id})")
        runs.append((run, store))
    rows = [row for run, store in runs for row in _metric_rows(run, store.rows())]
    return [run for run, _ in runs], pd.DataFrame(rows, columns=list(_ROW_COLUMNS))


def _figure(metric: str, table: pd.DataFrame, categories: list[str]):
    import plotly.graph_objects as go

    fig = go.Figure()
    for (pid, label), series in table.groupby(["point_id", "point"], sort=True):
        has_ci = series["ci_low"].notna() & series["ci_high"].notna()
        error = None
        if has_ci.any():
            error = dict(
                type="data",
                symmetric=False,
                array=(series["ci_high"] - series["value"]).where(has_ci).tolist(),
                arrayminus=(series["value"] - series["ci_low"]).where(has_ci).tolist(),
            )
        fig.add_trace(
            go.Scatter(
                x=series["run"].tolist(),
                y=series["value"].tolist(),
                mode="lines+markers",
                name=label,
                error_y=error,
                hovertemplate=f"{html.escape(label)}<br>"
                f"{pid}<br>%{{x}}<br>{metric} = %{{y:.6g}}<extra></extra>",
            )
        )
    better = {UP: "higher is better", DOWN: "lower is better"}.get(METRICS[metric].better, "")
    fig.update_layout(
        title=f"{metric}" + (f" ({better})" if better else ""),
        height=420,
        xaxis=dict(
            type="category", categoryorder="array", categoryarray=categories, title="commit, run start (UTC)"
        ),
        yaxis_title=metric,
        legend=dict(font=dict(size=10)),
        margin=dict(t=50, b=40),
    )
    return fig


def _runs_table(runs: list[HistoryRun], table: pd.DataFrame) -> str:
    counts = table.groupby("run")["point_id"].nunique()
    body = "".join(
        f"<tr><td>{html.escape(r.label)}</td><td>{html.escape(r.run_id)}</td>"
        f"<td><code>{html.escape(r.commit or 'n/a')}</code>{' (dirty)' if r.dirty else ''}</td>"
        f"<td>{int(counts.get(r.label, 0))}</td><td>{html.escape(r.path)}</td></tr>"
        for r in runs
    )
    head = "<tr><th>x label</th><th>run id</th><th>git commit</th><th>ok points</th><th>folder</th></tr>"
    return f"<table>{head}{body}</table>"


_STYLE = (
    "body{font-family:sans-serif;margin:1.5em;max-width:1400px}"
    "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
)


def build_history_report(paths: Sequence[str | Path], out_path: str | Path) -> Path:
    """Write the history page of `paths` (run, baseline or parent folders) to `out_path`; returns it."""
    out = check_output_file(out_path, "the report path")
    try:
        import plotly.offline
    except ImportError:
        raise UserInputError(
            "report --history draws its figures with plotly, which is not installed here; "
            "install it (pip install plotly) or run the history report on another machine"
        ) from None
    runs, table = load_history(paths)
    categories = [r.label for r in runs]
    divs = []
    for metric in [m for m in METRICS if m in set(table["metric"])]:
        fig = _figure(metric, table[table["metric"] == metric], categories)
        divs.append(
            fig.to_html(
                full_html=False,
                include_plotlyjs=False,
                div_id=f"history-{metric}",
                config={"displaylogo": False},
            )
        )
    if not divs:
        divs.append("<p>No ok points with metric values in these runs.</p>")
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>lamina-bench history</title>"
        f"<style>{_STYLE}</style><script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script>"
        "</head><body><h1>lamina-bench history</h1>"
        f"<p>{len(runs)} runs, oldest first; each line is one point (same configuration = same point_id); "
        "error bars are 95% CIs of the median where the point had repeats.</p>"
        f"{_runs_table(runs, table)}{''.join(divs)}</body></html>\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, page.encode())
    return out


__all__ = ["HistoryRun", "build_history_report", "find_run_dirs", "load_history"]
