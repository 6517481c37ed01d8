"""Statistics on repeats: the median with a distribution-free CI, and one aggregate row of repeats."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from lamina_bench.results.metrics import METRICS
from lamina_bench.results.row import PointRow


@dataclass(frozen=True)
class MedianCI:
    """Median with a distribution-free confidence interval [low, high] made of two order statistics.

    `coverage` is the exact probability that [low, high] contains the true median for continuous data:
    1 - 2 * P(Binomial(n, 1/2) <= k - 1) for order statistics k and n + 1 - k. It is >= 0.95 for
    n >= 6; for n = 3..5 the widest interval (min, max) reaches only 0.75 .. 0.9375, and says so.
    """

    median: float
    low: float
    high: float
    coverage: float
    n: int

    def __post_init__(self) -> None:
        if not self.low <= self.median <= self.high:
            raise ValueError(
                f"MedianCI needs low <= median <= high, got {self.low}, {self.median}, {self.high}"
            )
        if not 0.0 < self.coverage <= 1.0:
            raise ValueError(f"MedianCI coverage must be in (0, 1], got {self.coverage}")


def _binomial_half_cdf(k: int, n: int) -> float:
    """P(Binomial(n, 1/2) <= k)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def median_ci95(values: Sequence[float]) -> MedianCI | None:
    """Median and 95% CI of the median by order statistics (binomial; no distribution assumed).

    Picks the largest k with coverage of [x_(k), x_(n+1-k)] >= 0.95 (x sorted, 1-based); with fewer than
    6 values that is impossible and the interval is (min, max) with its lower coverage. None for fewer
    than 3 values. Source: e.g. Conover, "Practical Nonparametric Statistics", 3rd ed., sec. 3.2.
    """
    xs = sorted(float(v) for v in values)
    if any(math.isnan(x) for x in xs):
        raise ValueError("median_ci95: values contain NaN; drop failed repeats first")
    n = len(xs)
    if n < 3:
        return None
    k = 1
    while k + 1 <= n // 2 and 1 - 2 * _binomial_half_cdf(k, n) >= 0.95:  # coverage with k + 1
        k += 1
    coverage = 1 - 2 * _binomial_half_cdf(k - 1, n)
    return MedianCI(statistics.median(xs), xs[k - 1], xs[n - k], coverage, n)


def aggregate_repeats(rows: Sequence[PointRow], aggregate_point_id: str) -> PointRow:
    """One row from the repeats of a point: medians of the ok repeats, 95% CIs where >= 3 of them.

    All rows must share the configuration, source and profile. The result has repeat None, repeats =
    number of ok repeats, status failed only if all failed (with the first error), and otherwise
    `failed_repeats` / `repeat_error` when some failed.
    """
    if not rows:
        raise ValueError("aggregate_repeats: no rows")
    first = rows[0]
    for row in rows[1:]:
        same = (row.config(), row.source, row.profile) == (first.config(), first.source, first.profile)
        if not same:
            raise ValueError("aggregate_repeats: rows differ in configuration, source or profile")
    ok = [r for r in rows if r.ok]
    failed = [r for r in rows if not r.ok]
    walls = [r.wall_s for r in rows if r.wall_s is not None]
    metrics, ci = {}, {}
    for name in METRICS:
        values = [r.metrics[name] for r in ok if name in r.metrics]
        if values:
            metrics[name] = statistics.median(values)
        interval = median_ci95(values) if METRICS[name].has_ci else None
        if interval is not None:
            ci[name] = (interval.low, interval.high)
    out = first.replace(
        point_id=aggregate_point_id,
        repeat=None,
        repeats=len(ok),
        status="ok",
        error=None,
        metrics=metrics,
        ci=ci,
        wall_s=sum(walls) if walls else None,
    )
    if not ok:
        return out.replace(status="failed", error=f"all {len(rows)} repeats failed: {failed[0].error}")
    if failed:
        return out.replace(failed_repeats=len(failed), repeat_error=failed[0].error)
    return out
