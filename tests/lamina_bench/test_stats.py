"""Statistics on repeats: the median with its distribution-free CI, and one aggregate row of repeats."""

from __future__ import annotations

import json
import math
import random

import pytest

from lamina_bench.results.metrics import ci_metrics
from lamina_bench.results.row import PointRow, point_id
from lamina_bench.results.stats import aggregate_repeats, median_ci95
from tests.lamina_bench.test_results import make_row

# ---- median and its confidence interval ---------------------------------------------------------------


def test_median_ci95_hand_worked():
    ci = median_ci95([7, 3, 10, 1, 5, 9, 2, 8, 6, 4])  # n = 10: k = 2, coverage 1 - 2 * 11/1024
    assert (ci.median, ci.low, ci.high, ci.n) == (5.5, 2.0, 9.0, 10)
    assert ci.coverage == pytest.approx(1 - 22 / 1024)
    six = median_ci95([1, 2, 3, 4, 5, 6])  # n = 6: only (min, max) reaches 95%: 1 - 2/64
    assert (six.low, six.high, six.coverage) == (1.0, 6.0, pytest.approx(0.96875))
    three = median_ci95([3.0, 1.0, 2.0])  # n = 3: (min, max) covers only 75%, and says so
    assert (three.median, three.low, three.high, three.coverage) == (2.0, 1.0, 3.0, 0.75)
    assert median_ci95([1.0, 2.0]) is None and median_ci95([]) is None
    with pytest.raises(ValueError, match="NaN"):
        median_ci95([1.0, float("nan"), 2.0])


def test_median_ci95_coverage_against_simulation():
    """Reference: draw from an exponential (true median ln 2) and count how often the CI holds it."""
    rng = random.Random(0)
    for n in (8, 20, 41):
        trials = 2000
        hits = sum(
            (ci := median_ci95([rng.expovariate(1.0) for _ in range(n)])).low <= math.log(2) <= ci.high
            for _ in range(trials)
        )
        expected = median_ci95(list(range(n))).coverage
        assert expected >= 0.95
        assert abs(hits / trials - expected) < 4 * math.sqrt(expected * (1 - expected) / trials) + 1e-3


def test_aggregate_repeats():
    runs = [
        make_row(1, repeat=r, throughput_tok_per_s=t, mean_batch_size=1.0, wall_s=1.0)
        for r, t in enumerate([10, 30, 20, 50, 40, 60])
    ]
    failed = make_row(1, repeat=6, status="failed", error="boom", throughput_tok_per_s=None)
    agg = aggregate_repeats([*runs, failed], point_id({"aggregate": 1}))
    assert PointRow.from_record(json.loads(json.dumps(agg.to_record()))) == agg  # a valid, storable row
    assert agg.point_id == point_id({"aggregate": 1}) and agg.config() == runs[0].config()
    assert agg.repeat is None and agg.repeats == 6 and agg.ok and agg.error is None
    assert agg.value("throughput_tok_per_s") == 35.0  # median of 10..60
    assert agg.interval("throughput_tok_per_s") == (10.0, 60.0)
    assert agg.value("tbt_p50_ms") == 10.0 and agg.interval("tbt_p50_ms") == (10.0, 10.0)
    assert agg.value("mean_batch_size") == 1.0 and agg.interval("mean_batch_size") is None  # no CI kept
    assert agg.value("energy_j") is None and agg.interval("energy_j") is None  # no values: unknown, not 0
    assert set(agg.metrics) == {"throughput_tok_per_s", "tbt_p50_ms", "mean_batch_size"}
    assert set(agg.ci) == {"throughput_tok_per_s", "tbt_p50_ms"} and set(agg.ci) <= set(ci_metrics())
    assert agg.wall_s == 7.5  # every repeat's time, the failed one's 1.5 s included
    assert (agg.failed_repeats, agg.repeat_error) == (1, "boom")
    two = aggregate_repeats(runs[:2], point_id({"aggregate": 2}))
    assert two.value("throughput_tok_per_s") == 20.0 and two.ci == {}  # < 3 values: no CI
    assert (two.failed_repeats, two.repeat_error) == (None, None)
    all_failed = aggregate_repeats([failed, failed.replace(repeat=7)], point_id({"aggregate": 3}))
    assert not all_failed.ok and all_failed.error == "all 2 repeats failed: boom"
    assert all_failed.metrics == {} and all_failed.repeats == 0
    for other in (make_row(2), make_row(1, profile="cpu-cpu"), make_row(1, source="derived")):
        with pytest.raises(ValueError, match="rows differ in configuration, source or profile"):
            aggregate_repeats([make_row(1), other], point_id({"x": 1}))
    with pytest.raises(ValueError, match="no rows"):
        aggregate_repeats([], point_id({"x": 1}))
