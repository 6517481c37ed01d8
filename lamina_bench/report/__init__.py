"""HTML comparison report: is attention offloading worth it here, and why.

    build_report(["results/<run_id>"], "reports/<run_id>.html")      # -> Path of the written file

One self-contained file (plotly.js embedded once, no network when opened) with, for every run given:
a runs overview (failed points listed with their errors, changes between runs), then
1. Lamina against the homogeneous baseline of about equal cost (per model x workload, with ratios),
2. throughput and tokens per USD against batch size, 3. the Pareto frontier of tokens per USD against
TBT, 4. time per iteration by pool and the link bandwidth needed against the NIC line rate,
5. measured against modeled with the error, 6. telemetry timelines and validity verdicts,
7. an appendix with manifests, specs and every row's repro command.
Every figure and table names its source (measured / modeled / derived); a part without data says why.

plotly is imported only when a report is built; without it the page keeps its tables and says that the
figures were left out (the GPU machine has no plotly).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from lamina_bench.report.data import RunData, load_runs
from lamina_bench.report.page import Document, esc
from lamina_bench.report.sections import SECTIONS
from lamina_bench.results.files import atomic_write_bytes
from lamina_bench.results.paths import check_output_file

REPORTS_DIR = Path("reports")


def plotly_js() -> str | None:
    """The plotly.js bundle shipped with the plotly package, or None when plotly is not installed."""
    try:
        import plotly.offline
    except ImportError:
        return None
    return plotly.offline.get_plotlyjs()


def render_report(runs: Sequence[RunData], title: str | None = None, js: str | None = None) -> str:
    """The report page of loaded runs; `js` is the plotly.js source (None: figures left out)."""
    doc = Document(draw=js is not None)
    sections = [build(runs, doc) for build in SECTIONS]
    title = title or "lamina-bench report: " + ", ".join(r.label for r in runs)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lede = (
        f"Generated {now} from {len(runs)} run{'s' if len(runs) > 1 else ''} "
        f"({', '.join(esc(r.path) for r in runs)}). Every number is labelled: <b>measured</b> on the run's "
        "machine, <b>modeled</b> by the performance model and simulator (with the profile it was calibrated "
        "from), or <b>derived</b> from other numbers. Every price comes from the price set named with its "
        "workload (one provider or one method, one date; <code>lamina-bench hardware --prices NAME --sources</code>)."
    )
    if js is None:
        lede += " <b>Figures left out: the plotly package is not installed here.</b>"
    return doc.render(title, lede, sections, js)


def build_report(run_dirs: Sequence[str | Path], out_path: str | Path, *, title: str | None = None) -> Path:
    """Write the report of `run_dirs` (results/<run_id>/ folders) to `out_path`; returns the path.

    UserInputError (one line) when a folder is not a run or `out_path` cannot be written (checked before
    anything is read). The file is replaced atomically.
    """
    out = check_output_file(out_path, "the report path")
    if isinstance(run_dirs, str | Path):
        run_dirs = [run_dirs]
    runs = load_runs(list(run_dirs))
    page = render_report(runs, title=title, js=plotly_js())
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, page.encode())
    return out


def default_report_path(run_dirs: Sequence[str | Path]) -> Path:
    """reports/<run_id>.html for one run, reports/<first>-vs-<last>.html for several."""
    names = [Path(p).resolve().name for p in run_dirs]
    stem = names[0] if len(names) == 1 else f"{names[0]}-vs-{names[-1]}"
    return REPORTS_DIR / f"{stem}.html"


__all__ = ["REPORTS_DIR", "build_report", "default_report_path", "plotly_js", "render_report"]
