"""Per-request latencies (reference_impl/latency.py) against numbers worked by hand."""

from __future__ import annotations

import pytest

from reference_impl.engine import Completion, EngineRun, IterationRecord, Request
from reference_impl.latency import iteration_starts_s, latency_metrics, request_latencies, summarize


def _iteration(step: int, wall_s: float) -> IterationRecord:
    return IterationRecord(step, 0, 0, 0, 0, 0, 0.0, 0.0, wall_s)


def _run() -> tuple[EngineRun, list[Request]]:
    """Iterations of 0.1, 0.2, 0.3, 0.4 s start at 0, 0.1, 0.3, 0.6 s.

    Request 0 arrives at iteration 0 (t = 0), tokens at 0.1, 0.3, 0.6: ttft 0.1, gaps 0.2 and 0.3,
    tpot (0.6 - 0.1) / 2 = 0.25, e2el 0.6. Request 1 arrives at iteration 2 (t = 0.3), one token at 1.0:
    ttft 0.7, no gap, no tpot, e2el 0.7.
    """
    iterations = [_iteration(i, w) for i, w in enumerate((0.1, 0.2, 0.3, 0.4))]
    completions = [
        Completion(0, (1, 2), (5, 6, 7), "length", 0, (0.1, 0.3, 0.6)),
        Completion(1, (3,), (8,), "length", 2, (1.0,)),
    ]
    requests = [Request(0, (1, 2), 3), Request(1, (3,), 1, arrival_step=2)]
    return EngineRun(completions, iterations, 1.0), requests


def test_iterations_start_where_the_previous_ones_ended():
    assert iteration_starts_s(_run()[0]) == pytest.approx([0.0, 0.1, 0.3, 0.6])


def test_request_latencies_worked_by_hand():
    first, second = request_latencies(*_run())
    assert (first.arrival_s, first.ttft_s, first.e2el_s) == pytest.approx((0.0, 0.1, 0.6))
    assert first.itl_s == pytest.approx((0.2, 0.3)) and first.tpot_s == pytest.approx(0.25)
    assert (second.arrival_s, second.ttft_s, second.e2el_s) == pytest.approx((0.3, 0.7, 0.7))
    assert second.itl_s == () and second.tpot_s is None
    line = first.to_json()
    assert line["ttft_ms"] == pytest.approx(100) and line["tpot_ms"] == pytest.approx(250)
    assert line["itl_ms"]["count"] == 2 and line["itl_ms"]["max"] == pytest.approx(300)
    assert second.to_json()["itl_ms"] == {"count": 0, "mean": None, "median": None, "p90": None,
                                          "p99": None, "max": None}  # fmt: skip


def test_metrics_over_requests_and_pooled_gaps():
    """ttft over requests: 100 and 700 ms -> mean 400, median 400, p90 = 100 + 0.9 x 600 = 640,
    p99 = 100 + 0.99 x 600 = 694; tpot: the one request with a gap, 250; itl pooled: 200, 300."""
    m = latency_metrics(request_latencies(*_run()))
    assert (m["mean_ttft_ms"], m["median_ttft_ms"]) == pytest.approx((400, 400))
    assert (m["p90_ttft_ms"], m["p99_ttft_ms"]) == pytest.approx((640, 694))
    assert (m["mean_tpot_ms"], m["p99_tpot_ms"]) == pytest.approx((250, 250))
    assert (m["mean_itl_ms"], m["p90_itl_ms"]) == pytest.approx((250, 290))
    assert (m["mean_e2el_ms"], m["median_e2el_ms"]) == pytest.approx((650, 650))
    assert len(m) == 16


def test_no_values_summarize_to_none_not_zero():
    assert summarize([]) == {"mean": None, "median": None, "p90": None, "p99": None}
