"""Per-request latencies of a served run (measured): time to first token, gaps between tokens, TPOT, E2E.

Names follow vLLM's serving benchmark (benchmarks/benchmark_serving.py), in milliseconds:
- ttft: from the request's arrival to its first output token;
- itl: each gap between two consecutive output tokens of a request (pooled over requests);
- tpot: per request, (last token time - first token time) / (output tokens - 1), requests with >= 2 tokens;
- e2el: from arrival to the last output token.

Arrival: a request with `arrival_step` K arrives when engine iteration K starts, taken as the sum of the
wall times of iterations 0..K-1 (IterationRecord.wall_s; the engine's bookkeeping between two
iterations, microseconds, is not in it). A token's time is when the engine sampled it
(Completion.token_times_s, seconds since the run started).
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from reference_impl.engine import EngineRun, Request

LATENCY_KINDS = ("ttft", "tpot", "itl", "e2el")
STATS = ("mean", "median", "p90", "p99")


@dataclass(frozen=True)
class RequestLatency:
    """One request's latencies in seconds (measured)."""

    request_id: int
    arrival_s: float  # since the run started
    ttft_s: float
    itl_s: tuple[float, ...]  # gaps between consecutive output tokens (one fewer than the tokens)
    e2el_s: float

    @property
    def tpot_s(self) -> float | None:
        """Mean gap after the first token; None for a request with one output token."""
        return (self.e2el_s - self.ttft_s) / len(self.itl_s) if self.itl_s else None

    def to_json(self) -> dict:
        """ttft_ms, tpot_ms, e2el_ms and a summary of the token gaps (itl_ms), for one output line."""
        tpot = self.tpot_s
        return {
            "ttft_ms": 1e3 * self.ttft_s,
            "tpot_ms": None if tpot is None else 1e3 * tpot,
            "e2el_ms": 1e3 * self.e2el_s,
            "itl_ms": {"count": len(self.itl_s), **summarize([1e3 * g for g in self.itl_s]),
                       "max": 1e3 * max(self.itl_s) if self.itl_s else None},
        }  # fmt: skip


def iteration_starts_s(run: EngineRun) -> list[float]:
    """Start of each engine iteration, seconds since the run started (cumulative iteration wall times)."""
    return [0.0, *itertools.accumulate(it.wall_s for it in run.iterations)][: len(run.iterations)]


def request_latencies(run: EngineRun, requests: Sequence[Request]) -> list[RequestLatency]:
    """Latencies of every completed request, in the order of run.completions; `requests` gives each
    request's arrival_step (matched by request_id)."""
    arrival_step = {r.request_id: r.arrival_step for r in requests}
    starts = iteration_starts_s(run)
    out = []
    for c in run.completions:
        step = arrival_step[c.request_id]
        arrival = starts[step] if step < len(starts) else starts[-1]
        times = c.token_times_s
        gaps = tuple(b - a for a, b in itertools.pairwise(times))
        out.append(RequestLatency(c.request_id, arrival, times[0] - arrival, gaps, times[-1] - arrival))
    return out


def summarize(values: Sequence[float]) -> dict[str, float | None]:
    """mean, median, p90 and p99 (linear interpolation between closest ranks); None for no values."""
    if not values:
        return dict.fromkeys(STATS)
    ordered = sorted(values)
    q = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else ordered * 99
    return {
        "mean": statistics.fmean(ordered),
        "median": statistics.median(ordered),
        "p90": q[89],
        "p99": q[98],
    }


def latency_metrics(latencies: Sequence[RequestLatency]) -> dict[str, float | None]:
    """{stat}_{kind}_ms for kind in ttft, tpot, itl, e2el and stat in mean, median, p90, p99: over
    requests (ttft, tpot, e2el) or over every gap of every request (itl), as vLLM's benchmark does."""
    per_kind = {
        "ttft": [r.ttft_s for r in latencies],
        "tpot": [r.tpot_s for r in latencies if r.tpot_s is not None],
        "itl": [g for r in latencies for g in r.itl_s],
        "e2el": [r.e2el_s for r in latencies],
    }
    out: dict[str, float | None] = {}
    for kind, values in per_kind.items():
        for stat, value in summarize([1e3 * v for v in values]).items():
            out[f"{stat}_{kind}_ms"] = value
    return out
