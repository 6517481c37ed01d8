"""The report in a real browser: Debian's chromium, headless, driven by Playwright.

Checked on every report: no console errors (console.error/console.assert, uncaught exceptions, browser log
errors such as a failed resource load), no network requests other than the file itself, every figure
drawn (a plotly SVG with traces and marks in each plot div), a PNG screenshot saved. The same checks must
fail on a broken figure and on a page that fetches something. The report of a 50-point sweep must stay
under 10 MB and open (every figure drawn) in under 3 s.

Chromium is Debian's package at /usr/bin/chromium, installed by `make chromium` (which `make test` runs);
the tests never install anything and skip, saying so, when it is missing. Playwright launches that binary
(executable_path); its own browser download, `playwright install`, is not used.

`check_report` knows the report's page contract (lamina_bench/report/page.py): every figure is a
`div.plot`, the figure specs sit in `script#report-figures`, and the loader sets
`window.__laminaReport = {done, drawn, failed, ms}` once every figure has been drawn.

The real-run test takes LAMINA_BENCH_REPORT_RUN or the newest results/[reference/]<run_id>/ (what
`make bench` writes) and skips when there is none.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Route, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from lamina_bench.catalog.prices import PAPER_PRICE_SET
from lamina_bench.report import build_report
from lamina_bench.report.data import load_runs
from tests.lamina_bench.test_report_fixtures import bench_like_run, gpu_like_run, sweep_rows_50, write_run
from tests.lamina_bench.test_report_validation import validation_run

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
# No sandbox (containers run as root), no GPU, and nothing that phones home on its own, so every network
# request seen during a test comes from the page. Playwright starts each browser with a fresh, empty
# user data dir of its own (a temporary directory, removed when the browser closes).
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 1000}  # CSS pixels, at 1 device pixel each
SCREENSHOT_MAX_HEIGHT = 30000
LOAD_LIMIT_MS = 3000.0
SIZE_LIMIT_BYTES = 10e6
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class FigureState:
    """What the browser drew in one `div.plot`."""

    id: str
    has_svg: bool
    traces: int  # plotly trace groups (g.trace) inside the figure's SVG
    marks: int  # drawn SVG paths (lines, markers, bars) inside those trace groups
    width_px: float
    height_px: float

    @property
    def rendered(self) -> bool:
        return (
            self.has_svg and self.traces > 0 and self.marks > 0 and self.width_px > 0 and self.height_px > 0
        )


@dataclass(frozen=True)
class PageCheck:
    """Everything `check_report` saw while opening one page."""

    url: str
    load_ms: float | None  # navigation start -> every figure drawn (performance.now() in the page)
    wall_s: float  # page.goto -> loader done, measured here
    console_errors: tuple[str, ...]
    requests: tuple[str, ...]  # every URL the page asked for (HTTP(S), file, WebSocket), in order
    figures: tuple[FigureState, ...]
    expected_figures: int  # figure specs embedded in the page
    loader: Mapping[str, Any] | None  # window.__laminaReport
    screenshot: Path | None
    verdict_rows: int = 0  # drawn rows (with a visible box) of the tables in section#verdict

    @property
    def network_requests(self) -> list[str]:
        """Requests other than the file itself (data: and blob: URLs never leave the page)."""
        return [u for u in self.requests if u != self.url and not u.startswith(("data:", "blob:"))]

    def problems(self) -> list[str]:
        """One line per thing that is wrong; empty when the page is fine."""
        out = [f"console error: {e}" for e in self.console_errors]
        out += [f"network request: {u}" for u in self.network_requests]
        if self.loader is None or not self.loader.get("done"):
            out.append(f"the figure loader did not finish: {self.loader}")
        elif self.loader.get("failed"):
            out.append(f"figures failed to draw: {self.loader['failed']}")
        if len(self.figures) != self.expected_figures:
            out.append(f"{len(self.figures)} figure divs for {self.expected_figures} embedded figure specs")
        out += [f"figure {f.id} not rendered: {f}" for f in self.figures if not f.rendered]
        return out


_FIGURES_JS = """() => ({
  figures: Array.from(document.querySelectorAll('div.plot')).map(d => {
    const r = d.getBoundingClientRect();
    return {id: d.id, has_svg: !!d.querySelector('svg.main-svg'),
            traces: d.querySelectorAll('svg.main-svg g.trace').length,
            marks: d.querySelectorAll('svg.main-svg g.trace path').length, width_px: r.width, height_px: r.height};
  }),
  expected: (() => { const s = document.getElementById('report-figures');
                     return s ? Object.keys(JSON.parse(s.textContent)).length : 0; })(),
  loader: window.__laminaReport || null,
  verdict_rows: Array.from(document.querySelectorAll('section#verdict table tr'))
    .filter(tr => tr.getBoundingClientRect().height > 0).length,
})"""


def check_report(
    browser: Browser, html: str | Path, screenshot: str | Path | None = None, timeout_s: float = 30.0
) -> PageCheck:
    """Open `html` in a fresh browser context, wait for the report's figure loader, and collect console
    errors, requests and figures.

    Every request is logged. Any other HTTP(S) or file request than the file itself is also aborted
    before it leaves the browser, so a test never touches the network; it still counts as a request.
    WebSockets are logged only (the launch flags keep the browser's own traffic out of the log).
    """
    url = Path(html).resolve().as_uri()
    requests: list[str] = []
    errors: list[str] = []

    def only_the_page(route: Route) -> None:
        if route.request.url == url:
            route.continue_()
        else:
            route.abort("blockedbyclient")

    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1, service_workers="block")
    try:
        context.on("request", lambda request: requests.append(request.url))
        context.route("**/*", only_the_page)
        page = context.new_page()
        page.on("websocket", lambda ws: requests.append(ws.url))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type in ("error", "assert") else None)
        page.on("pageerror", lambda exc: errors.append(f"uncaught {exc.name}: {exc.message}"))
        page.on("crash", lambda _: errors.append("the page crashed"))
        t0 = time.monotonic()
        page.goto(url, timeout=timeout_s * 1000)
        with contextlib.suppress(PlaywrightTimeout):  # problems() says the loader did not finish
            page.wait_for_function(
                "() => !!(window.__laminaReport && window.__laminaReport.done)", timeout=timeout_s * 1000
            )
        wall_s = time.monotonic() - t0
        page.wait_for_timeout(200)  # late console messages
        state = page.evaluate(_FIGURES_JS)
        shot = _screenshot(page, Path(screenshot)) if screenshot else None
    finally:
        context.close()
    loader = state["loader"]
    return PageCheck(
        url=url,
        load_ms=(loader or {}).get("ms"),
        wall_s=wall_s,
        console_errors=tuple(errors),
        requests=tuple(requests),
        figures=tuple(FigureState(**f) for f in state["figures"]),
        expected_figures=state["expected"],
        loader=loader,
        screenshot=shot,
        verdict_rows=state["verdict_rows"],
    )


def _screenshot(page: Page, path: Path) -> Path:
    """Full-page PNG at 1 CSS px = 1 px (at most SCREENSHOT_MAX_HEIGHT px tall)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # The clip is trimmed to the page: a shorter page gives a shorter image.
    clip = {"x": 0, "y": 0, "width": VIEWPORT["width"], "height": SCREENSHOT_MAX_HEIGHT}
    page.screenshot(path=path, full_page=True, clip=clip, timeout=60_000)
    return path


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(
            f"Debian's chromium is not installed ({CHROMIUM} is missing): run `make chromium`, which "
            "installs it with apt-get (`make test` does this first)"
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser-runs")
    out = tmp_path_factory.mktemp("browser-reports")
    bench, gpu = bench_like_run(root), gpu_like_run(root)
    after = bench_like_run(root, "bench-like-after", scale=1.1)
    sweep = write_run(root, "sweep50", sweep_rows_50())
    validate = validation_run(root)  # the model-error section's tables and parity figures
    return {
        "bench": build_report([bench, gpu, validate], out / "bench.html"),
        "two": build_report([bench, after], out / "two.html"),
        "sweep": build_report([sweep], out / "sweep50.html"),
    }


def _assert_clean(check: PageCheck, html: Path) -> None:
    assert not check.problems(), "\n".join(check.problems())
    assert check.expected_figures == html.read_text().count('<div class="plot"') == len(check.figures) > 0
    assert check.requests == (html.resolve().as_uri(),)


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 50_000


def test_report_renders_in_chromium(browser, reports, tmp_path):
    for name in ("bench", "two"):
        check = check_report(browser, reports[name], screenshot=tmp_path / f"{name}.png")
        _assert_clean(check, reports[name])
        _assert_png(check.screenshot)
        assert check.loader["drawn"] == check.expected_figures
        # the verdict opens the page: a header and a line per TBT target for each model and workload
        assert check.verdict_rows >= 2 * 4, check.verdict_rows


def test_sweep_of_50_points_is_small(reports):
    assert reports["sweep"].stat().st_size < SIZE_LIMIT_BYTES


@pytest.mark.slow  # the bench-like reports render in make test; this larger one with the slow tests
def test_sweep_of_50_points_renders(browser, reports, tmp_path):
    """A clean render; how fast it opens is a benchmark (tests/bench/test_bench_report_load.py)."""
    html = reports["sweep"]
    check = check_report(browser, html, screenshot=tmp_path / "sweep.png")
    _assert_clean(check, html)
    print(f"50-point report: {html.stat().st_size / 1e6:.2f} MB, loaded in {check.load_ms:.0f} ms")


def _with_figure(html: Path, out: Path, fig_id: str, spec) -> Path:
    """A copy of the report whose figure `fig_id` has `spec` instead of its own."""
    page = html.read_text()
    pattern = re.compile(r'(<script type="application/json" id="report-figures">)(.*?)(</script>)', re.S)
    specs = json.loads(pattern.search(page).group(2))
    assert fig_id in specs
    specs[fig_id] = spec
    out.write_text(pattern.sub(lambda m: m.group(1) + json.dumps(specs) + m.group(3), page, count=1))
    return out


@pytest.mark.parametrize(
    ("spec", "expect"),
    [
        ({"data": [None], "layout": {}}, "failed to draw"),  # plotly.js throws: a console error
        ({"data": "not a list", "layout": {}}, "not rendered"),  # plotly.js draws empty axes silently
    ],
    ids=["throws", "empty"],
)
@pytest.mark.slow  # the checker itself; `make test-slow`
def test_a_broken_figure_fails_the_check(browser, reports, tmp_path, spec, expect):
    broken = _with_figure(reports["bench"], tmp_path / "broken.html", "fig-2", spec)
    problems = check_report(browser, broken).problems()
    assert any(expect in p and "fig-2" in p for p in problems), problems
    assert not any("fig-1 " in p for p in problems)  # the other figures still draw


def _with_before_body_end(html: Path, out: Path, snippet: str) -> Path:
    out.write_text(html.read_text().replace("</body>", snippet + "</body>"))
    return out


@pytest.mark.slow  # the checker itself; `make test-slow`
def test_console_errors_fail_the_check(browser, reports, tmp_path):
    snippet = (
        "<script>console.error('logged error'); console.assert(false, 'failed assertion');"
        "setTimeout(() => { throw new TypeError('uncaught error'); });</script>"
    )
    problems = check_report(
        browser, _with_before_body_end(reports["bench"], tmp_path / "e.html", snippet)
    ).problems()
    for expected in ("logged error", "failed assertion", "uncaught TypeError: uncaught error"):
        assert f"console error: {expected}" in problems, problems


@pytest.mark.slow  # the checker itself; `make test-slow`
def test_a_network_request_fails_the_check(browser, reports, tmp_path):
    fetches = {
        '<img src="http://127.0.0.1:9/pixel.png">': "http://127.0.0.1:9/pixel.png",
        "<script>fetch('https://example.invalid/data.json').catch(() => {});</script>": (
            "https://example.invalid/data.json"
        ),
        "<script>new WebSocket('ws://127.0.0.1:9/live');</script>": "ws://127.0.0.1:9/live",
        '<link rel="stylesheet" href="other.css">': (tmp_path / "other.css").as_uri(),  # a local file too
    }
    fetching = _with_before_body_end(reports["bench"], tmp_path / "fetching.html", "".join(fetches))
    problems = check_report(browser, fetching).problems()
    for url in fetches.values():
        assert f"network request: {url}" in problems, problems


def _real_run() -> Path | None:
    given = os.environ.get("LAMINA_BENCH_REPORT_RUN")
    if given:
        return Path(given)
    manifests = [
        *(REPO / "results").glob("*/manifest.json"),
        *(REPO / "results" / "reference").glob("*/manifest.json"),
    ]
    runs = [
        m.parent
        for m in manifests
        if (m.parent / "points").is_dir() or (m.parent / "points.parquet").is_file()
    ]
    return (
        max(runs, key=lambda p: json.loads((p / "manifest.json").read_text()).get("start_time") or "")
        if runs
        else None
    )


def _paper_pairs(run: Path) -> set[tuple[str, str]]:
    """The paper's model x trace pairs the run simulated with the paper's price set."""
    rows = load_runs([run])[0].rows
    return {(r.model, r.trace) for r in rows if r.trace and r.settings.get("prices") == PAPER_PRICE_SET}


def test_report_of_a_real_run(browser, tmp_path):
    run = _real_run()
    if run is None:
        pytest.skip(
            "no run under results/ or results/reference/ (`make bench` writes one); or set LAMINA_BENCH_REPORT_RUN"
        )
    html = build_report([run], tmp_path / f"{run.name}.html")
    page = html.read_text()
    for sid in (
        "verdict",
        "runs",
        "headline",
        "batch",
        "pareto",
        "time",
        "predictions",
        "telemetry",
        "appendix",
    ):
        assert f'<section id="{sid}">' in page
    verdict = page[
        page.index('<section id="verdict">') : page.index("</section>", page.index('id="verdict"'))
    ]
    for model, trace in _paper_pairs(run):
        assert f"<h3>{model} · {trace} (" in verdict, (model, trace)  # a verdict table per paper pair
    shot = REPO / "reports" / f"{run.name}-browser-test.png"
    check = check_report(browser, html, screenshot=shot)
    _assert_clean(check, html)
    _assert_png(shot)
    assert check.verdict_rows > 0
