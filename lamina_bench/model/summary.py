"""Metrics of a replay: throughput on the basis of its arrival mode, token and request latencies.

Throughput, one definition per arrival mode (`throughput_basis`):
  saturate     "saturated phase": generated tokens / time over the iterations that start while requests
               still wait to be admitted for the first time (before the last first admission), i.e. the
               system full, without the drain whose length one long request sets;
  concurrency  "closed-loop phase": the same over the iterations before the last request is sent, while
               every one of the N clients has a request outstanding;
  trace, poisson  "whole trace": all generated tokens / makespan (first arrival at t = 0 to the end of the
               last iteration), as serving benchmarks report output throughput.
The whole-run figures are kept beside the phase ones (`whole_trace_*` in `SimulationResult.to_dict`).

Latencies (per request, then mean / median / p99 over the served requests): TTFT = end of the iteration
that produced the first token - arrival; TPOT = (end of the last token's iteration - end of the first
token's) / (output tokens - 1), requests with one output token excluded; E2EL = last token - arrival.
TBT: every decode token's time between tokens is its iteration's duration (token-weighted over the decode
tokens). Under reserve-all the first token comes from the first decode iteration (prefill excluded).
"""

from __future__ import annotations

import numpy as np

from lamina_bench.model.paged_replay import ServingReplay


def weighted_percentiles(values: np.ndarray, weights: np.ndarray, percents: tuple[float, ...]) -> list[float]:
    """Percentiles of `values` where each value counts `weights` times (lower value at ties)."""
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    idx = np.searchsorted(cum, np.asarray(percents) / 100.0 * cum[-1], side="left")
    return [float(v) for v in values[order][np.minimum(idx, len(values) - 1)]]


def phase_end(rep: ServingReplay, arrival: str) -> int | None:
    """First iteration after the steady phase of the mode (module doc); None for the open-loop modes."""
    if arrival == "saturate":
        admitted = rep.admit_iteration[rep.admit_iteration >= 0]
        return int(admitted.max()) if len(admitted) else 0
    if arrival == "concurrency" and rep.release_iteration is not None:
        released = rep.release_iteration[rep.release_iteration >= 0]
        return int(released.max()) + 1 if len(released) else 0
    return None


def phase_rates(rep: ServingReplay, time_s: np.ndarray, end: int | None) -> tuple[float | None, float | None]:
    """(throughput, tokens per iteration) over iterations [0, end); None when the phase is empty."""
    if end is None or end <= 0:
        return None, None
    tokens = float(rep.generated[:end].sum())
    return tokens / float(time_s[:end].sum()), tokens / end


def release_by_finish_order(finish_iteration: np.ndarray, concurrency: int) -> np.ndarray:
    """Closed loop of `concurrency` clients: the iteration after which each request was sent (-1: at the
    start), request N + j after the (j + 1)-th completion, completions in finish order."""
    runnable = np.flatnonzero(finish_iteration >= 0)  # the rest are rejected: never sent to the engine
    order = runnable[np.argsort(finish_iteration[runnable], kind="stable")]
    sent = np.full(len(finish_iteration), -1, dtype=np.int64)
    later = runnable[concurrency:]
    sent[later] = finish_iteration[order[: len(later)]]
    return sent


def closed_loop_arrivals(rep: ServingReplay, end_s: np.ndarray) -> np.ndarray:
    """Arrival time of each request of a closed loop: 0 for those sent at the start, else the end of the
    iteration after which it was sent (`rep.release_iteration`)."""
    sent = rep.release_iteration
    return np.where(sent >= 0, end_s[np.maximum(sent, 0)], 0.0)


def latency_stats(
    rep: ServingReplay, output_len: np.ndarray, arrival_s: np.ndarray, end_s: np.ndarray
) -> dict[str, float | None]:
    """TTFT, TPOT and E2EL mean / p50 / p99 in ms over the served requests (module doc)."""
    served = np.flatnonzero(rep.finish_iteration >= 0)
    out: dict[str, float | None] = {}
    if not len(served):
        return {f"{m}_{s}_ms": None for m in ("ttft", "tpot", "e2el") for s in ("mean", "p50", "p99")}
    first = end_s[rep.first_token_iteration[served]]
    last = end_s[rep.finish_iteration[served]]
    tokens = np.asarray(output_len, dtype=np.int64)[served]
    multi = tokens > 1
    series = {
        "ttft": first - arrival_s[served],
        "tpot": (last - first)[multi] / (tokens[multi] - 1),
        "e2el": last - arrival_s[served],
    }
    for name, values in series.items():
        ok = len(values) > 0
        out[f"{name}_mean_ms"] = float(values.mean()) * 1e3 if ok else None
        out[f"{name}_p50_ms"] = float(np.percentile(values, 50)) * 1e3 if ok else None
        out[f"{name}_p99_ms"] = float(np.percentile(values, 99)) * 1e3 if ok else None
    return out
