"""The report in a real browser: Debian's chromium, headless, driven over the DevTools protocol.

Checked on every report: no console errors, no network requests other than the file itself, every
figure drawn (a plotly SVG with traces and marks in each plot div), a PNG screenshot saved. The same
checks must fail on a broken figure and on a page that fetches something. The report of a 50-point
sweep must stay under 10 MB and open (every figure drawn) in under 3 s.

Chromium is installed with apt-get by the set-up when missing; the tests skip, saying why, only if that
install fails. The real-run test takes LAMINA_BENCH_REPORT_RUN or the newest results/[reference/]<run_id>/ (what
`make bench` writes) and skips when there is none.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from browser import Chromium, ensure_chromium
from test_report_fixtures import bench_like_run, gpu_like_run, sweep_rows_50, write_run

from lamina_bench.report import build_report

REPO = Path(__file__).resolve().parents[2]
LOAD_LIMIT_MS = 3000.0
SIZE_LIMIT_BYTES = 10e6
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def browser():
    path, reason = ensure_chromium()
    if path is None:
        pytest.skip(f"headless Chromium unavailable: {reason}")
    with Chromium(path) as chromium:
        yield chromium


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser-runs")
    out = tmp_path_factory.mktemp("browser-reports")
    bench, gpu = bench_like_run(root), gpu_like_run(root)
    after = bench_like_run(root, "bench-like-after", scale=1.1)
    sweep = write_run(root, "sweep50", sweep_rows_50())
    return {
        "bench": build_report([bench, gpu], out / "bench.html"),
        "two": build_report([bench, after], out / "two.html"),
        "sweep": build_report([sweep], out / "sweep50.html"),
    }


def _assert_clean(check, html: Path) -> None:
    assert not check.problems(), "\n".join(check.problems())
    assert check.expected_figures == html.read_text().count('<div class="plot"') == len(check.figures) > 0
    assert check.requests == (html.resolve().as_uri(),)


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 50_000


def test_report_renders_in_chromium(browser, reports, tmp_path):
    for name in ("bench", "two"):
        check = browser.check_report(reports[name], screenshot=tmp_path / f"{name}.png")
        _assert_clean(check, reports[name])
        _assert_png(check.screenshot)
        assert check.loader["drawn"] == check.expected_figures


def test_sweep_of_50_points_is_small_and_opens_fast(browser, reports, tmp_path):
    html = reports["sweep"]
    assert html.stat().st_size < SIZE_LIMIT_BYTES
    # Best of up to three loads: this shared 2-core machine may be busy with other work; a load under
    # the limit shows the page can open that fast.
    times = []
    for attempt in range(3):
        check = browser.check_report(html, screenshot=tmp_path / "sweep.png" if attempt == 0 else None)
        _assert_clean(check, html)
        times.append(check.load_ms)
        if check.load_ms < LOAD_LIMIT_MS:
            break
    assert min(times) < LOAD_LIMIT_MS, f"page loads took {times} ms (navigation start to every figure drawn)"
    print(f"50-point report: {html.stat().st_size / 1e6:.2f} MB, loads {times} ms")


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
def test_a_broken_figure_fails_the_check(browser, reports, tmp_path, spec, expect):
    broken = _with_figure(reports["bench"], tmp_path / "broken.html", "fig-2", spec)
    problems = browser.check_report(broken).problems()
    assert any(expect in p and "fig-2" in p for p in problems), problems
    assert not any("fig-1 " in p for p in problems)  # the other figures still draw


def test_a_network_request_fails_the_check(browser, reports, tmp_path):
    page = reports["bench"].read_text().replace("</body>", '<img src="http://127.0.0.1:9/pixel.png"></body>')
    fetching = tmp_path / "fetching.html"
    fetching.write_text(page)
    problems = browser.check_report(fetching).problems()
    assert "network request: http://127.0.0.1:9/pixel.png" in problems


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


def test_report_of_a_real_run(browser, tmp_path):
    run = _real_run()
    if run is None:
        pytest.skip(
            "no run under results/ or results/reference/ (`make bench` writes one); or set LAMINA_BENCH_REPORT_RUN"
        )
    html = build_report([run], tmp_path / f"{run.name}.html")
    page = html.read_text()
    for sid in ("runs", "headline", "batch", "pareto", "time", "predictions", "telemetry", "appendix"):
        assert f'<section id="{sid}">' in page
    shot = REPO / "reports" / f"{run.name}-browser-test.png"
    check = browser.check_report(html, screenshot=shot)
    _assert_clean(check, html)
    _assert_png(shot)
    assert check.load_ms < 2 * LOAD_LIMIT_MS, check.load_ms  # a real run is smaller than the 50-point sweep
