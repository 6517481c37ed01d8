"""How fast the report of a 50-point sweep opens in Chromium: navigation start to every figure drawn.

Target: under 3 s. Skipped by default; run with `pytest tests/bench --benchmark-only` (needs Debian's
chromium, `make chromium`).
"""

from __future__ import annotations

from tests.lamina_bench.test_report_browser import (  # noqa: F401 (browser, reports: fixtures)
    LOAD_LIMIT_MS,
    browser,
    check_report,
    reports,
)


def test_bench_report_load(benchmark, browser, reports):  # noqa: F811
    html = reports["sweep"]
    checks = []

    def load() -> float:
        check = check_report(browser, html)
        assert not check.problems(), "\n".join(check.problems())
        checks.append(check)
        return check.load_ms

    benchmark.pedantic(load, rounds=3, iterations=1)
    load_ms = sorted(c.load_ms for c in checks)
    assert load_ms[len(load_ms) // 2] < LOAD_LIMIT_MS, f"median page load {load_ms} ms"
