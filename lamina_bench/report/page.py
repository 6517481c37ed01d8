"""The page shell: one self-contained HTML file with plotly.js embedded once and every figure as JSON.

Contract with the browser test (tests/lamina_bench/test_report_browser.py):
- every figure is a `<div class="plot" id="fig-N">` and its spec sits under the same id in the JSON
  object of `<script type="application/json" id="report-figures">`;
- the loader draws them in order with Plotly.newPlot, logs a console error for each one that fails, and
  sets `window.__laminaReport = {done, drawn, failed, ms}` (ms = performance.now() when all are drawn).
Nothing is fetched: no CDN, no web fonts (system font stack), no MathJax.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lamina_bench.report.figures import Figure, Missing

SOURCE_CLASSES = ("measured", "modeled", "derived")

_CSS = """
:root{--fg:#1b1f24;--muted:#57606a;--line:#d0d7de;--bg2:#f6f8fa}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;color:var(--fg);
 margin:0 auto;padding:0 24px 48px;max-width:1400px;line-height:1.45}
h1{font-size:26px;margin:24px 0 4px}h2{font-size:21px;margin:36px 0 8px;border-bottom:1px solid var(--line)}
h3{font-size:16px;margin:22px 0 6px}p.lede{color:var(--muted);margin:0 0 12px}
nav ol{columns:2;font-size:14px;margin:8px 0}
table.data{border-collapse:collapse;font-size:13px;margin:6px 0 14px}
table.data td,table.data th{border:1px solid var(--line);padding:3px 7px;text-align:left;vertical-align:top}
table.data th{background:var(--bg2)}table.data td.num{text-align:right;font-variant-numeric:tabular-nums}
table.data caption{text-align:left;font-size:13px;color:var(--muted);padding:2px 0}
.src{display:inline-block;font-size:11px;padding:0 6px;border-radius:8px;margin-right:4px;
 border:1px solid var(--line);background:#fff;white-space:nowrap}
.src.measured{background:#dafbe1;border-color:#4ac26b}.src.modeled{background:#ddf4ff;border-color:#54aeff}
.src.derived{background:#fff8c5;border-color:#d4a72c}
.missing{border:1px dashed #d4a72c;background:#fffdf0;padding:8px 12px;margin:8px 0;font-size:14px}
figure{margin:10px 0 18px}figcaption{font-size:13px;color:var(--muted)}
div.plot{width:100%}
pre{background:var(--bg2);padding:8px;overflow:auto;font-size:12px;max-height:480px}
details{margin:6px 0}summary{cursor:pointer}code{font-size:12px}
.better{color:#1a7f37;font-weight:600}.worse{color:#cf222e;font-weight:600}
"""

# Draws every figure; a failure is logged as a console error and leaves a message in the figure's div.
_LOADER_JS = """
(async function () {
  const status = {done: false, drawn: 0, failed: [], ms: null};
  window.__laminaReport = status;
  const specs = JSON.parse(document.getElementById('report-figures').textContent);
  for (const [id, fig] of Object.entries(specs)) {
    const div = document.getElementById(id);
    try {
      if (!div) throw new Error('no element with id ' + id);
      await Plotly.newPlot(div, fig.data, fig.layout, {displaylogo: false, responsive: true});
      status.drawn += 1;
    } catch (err) {
      status.failed.push(id + ': ' + err);
      console.error('report figure ' + id + ' failed to draw: ' + err);
      if (div) div.textContent = 'This figure failed to draw: ' + err;
    }
  }
  status.ms = performance.now();
  status.done = true;
})();
"""
# Without plotly.js there is nothing to draw; the status still says the page is done.
_NO_PLOTLY_JS = "window.__laminaReport = {done: true, drawn: 0, failed: [], ms: performance.now()};"


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def fmt_num(value: Any, digits: int = 4) -> str:
    """`digits` significant digits with thousands separators; "n/a" for a missing value."""
    if value is None or isinstance(value, bool):
        return "n/a"
    try:
        value = float(value)
    except (TypeError, ValueError):
        return esc(value)
    if not math.isfinite(value):
        return "n/a"
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:,.{decimals}f}"


def source_badges(source: str) -> str:
    """`<span class="src measured">measured</span>` for each source word in `source`."""
    words = [w for w in SOURCE_CLASSES if w in source]
    if not words:
        return f'<span class="src">{esc(source)}</span>'
    return "".join(f'<span class="src {w}">{w}</span>' for w in words)


def _compact(value: Any) -> Any:
    """Drop None-valued keys of dicts (unset plotly attributes); NaN/inf in lists -> null."""
    if isinstance(value, Mapping):
        return {str(k): _compact(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_compact(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def figures_json(specs: Mapping[str, Mapping[str, Any]]) -> str:
    """The figure specs as JSON safe inside a <script> element ("</" cannot end it early)."""
    text = json.dumps(_compact(specs), separators=(",", ":"), allow_nan=False)
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


@dataclass(frozen=True)
class Section:
    id: str  # anchor
    title: str
    source: str  # sources of the numbers in the section, e.g. "measured, modeled"
    body: str  # HTML


class Document:
    """Collects the figures of a page while sections are written; renders the page at the end."""

    def __init__(self, draw: bool = True) -> None:
        self.draw = draw  # False: plotly.js is not available, figures become notes
        self.specs: dict[str, dict[str, Any]] = {}
        self.missing: list[str] = []  # titles of parts that said why they have no data

    def figure(self, fig: Figure | Missing) -> str:
        """HTML for a figure: its div (spec registered) or a note saying why there is nothing to draw."""
        if isinstance(fig, Missing):
            self.missing.append(fig.title)
            return note(f"<b>{esc(fig.title)}</b>: not drawn, {esc(fig.reason)}.")
        notes = "".join(f"<br>{esc(n)}" for n in fig.notes)
        caption = f"<figcaption>{source_badges(fig.source)} {esc(fig.title)}{notes}</figcaption>"
        if not self.draw:
            return (
                note(
                    f"<b>{esc(fig.title)}</b>: figure left out, the plotly package is not installed "
                    "where this report was built (the tables carry the numbers)."
                )
                + caption
            )
        fig_id = f"fig-{len(self.specs) + 1}"
        self.specs[fig_id] = fig.spec
        # A fixed height: plotly's responsive redraw would otherwise collapse the div for a moment
        height = int(fig.spec.get("layout", {}).get("height") or 450)
        return f'<figure><div class="plot" id="{fig_id}" style="height:{height}px"></div>{caption}</figure>'

    def render(self, title: str, lede: str, sections: Sequence[Section], plotly_js: str | None) -> str:
        nav = "".join(
            f'<li><a href="#{s.id}">{esc(s.title)}</a> {source_badges(s.source)}</li>' for s in sections
        )
        body = "".join(
            f'<section id="{s.id}"><h2>{esc(s.title)} {source_badges(s.source)}</h2>{s.body}</section>'
            for s in sections
        )
        scripts = (
            f"<script>{plotly_js}</script>"
            f'<script type="application/json" id="report-figures">{figures_json(self.specs)}</script>'
            f"<script>{_LOADER_JS}</script>"
            if plotly_js is not None
            else f'<script type="application/json" id="report-figures">{{}}</script><script>{_NO_PLOTLY_JS}</script>'
        )
        return (
            "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{esc(title)}</h1><p class='lede'>{lede}</p><nav><ol>{nav}</ol></nav>{body}{scripts}"
            "</body></html>\n"
        )


def note(inner_html: str) -> str:
    return f'<div class="missing">{inner_html}</div>'


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    caption: str = "",
    numeric: Sequence[bool] | None = None,
) -> str:
    """An HTML table; cells are HTML already (escape text with esc()), numeric columns right-aligned."""
    numeric = numeric or [False] * len(headers)
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if n else ''}>{c}</td>" for c, n in zip(r, numeric, strict=True))
        + "</tr>"
        for r in rows
    )
    cap = f"<caption>{caption}</caption>" if caption else ""
    return f'<table class="data">{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


__all__ = ["Document", "Section", "esc", "figures_json", "fmt_num", "note", "source_badges", "table"]
