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

Latencies, with the names and units of vLLM's serving benchmark (mean / median / p90 / p99, ms, over
the served requests): TTFT = first token - arrival (the end of the iteration that produced it, or the
prefill pool's sampling time); TPOT = (last token - first token) / (output tokens - 1), requests with one
output token excluded; E2EL = last token - arrival; ITL = every gap between consecutive tokens of a
request, pooled over requests: a decode token's gap is the end of its iteration minus the end of the
previous iteration that ran decodes (exact when every running request decodes in every iteration,
i.e. chunked prefill or a prefill pool, without preemption), and each request's first gap (first to
second token) is its own. Queueing delay (mean / median / p99) = start of the request's first scheduled
work (the iteration that admits it, or its prefill on the pool) - arrival.
Under reserve-all (decode only, prefill excluded) TTFT, E2EL and goodput are not modelled and left
empty (None); TPOT, ITL and the queueing delay are decode-only figures.
TBT: every decode token's time between tokens is its iteration's duration (token-weighted over the decode
tokens).

Throughputs over the whole run (vLLM's benchmark duration: first arrival to the last token):
request_throughput = served requests / duration, output_throughput = generated tokens / duration,
total_token_throughput = (prompt + generated tokens of the served requests) / duration, request_goodput =
served requests whose TTFT <= the TTFT SLO and TPOT <= the TPOT SLO (each only when given; a one-token
request meets any TPOT SLO, as in vLLM) / duration.
"""

from __future__ import annotations

import math

import numpy as np

from lamina_bench.errors import UserInputError
from lamina_bench.model.paged_replay import ServingReplay


def weighted_percentiles(values: np.ndarray, weights: np.ndarray, percents: tuple[float, ...]) -> list[float]:
    """Percentiles of `values` where each value counts `weights` times (lower value at ties). The order of
    equal values does not change the result, so the sort need not be stable."""
    order = np.argsort(values)
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


LATENCY_KINDS = ("ttft", "tpot", "itl", "e2el")
LATENCY_STATS = ("mean", "median", "p90", "p99")
QUEUEING_STATS = ("mean", "median", "p99")
_PERCENT = {"median": 50, "p90": 90, "p99": 99}


def latency_fields() -> tuple[str, ...]:
    """Every per-request latency field a simulation result carries (vLLM's names, ms)."""
    return (
        *(f"{s}_{k}_ms" for k in LATENCY_KINDS for s in LATENCY_STATS),
        *(f"{s}_queueing_delay_ms" for s in QUEUEING_STATS),
    )


def _stats(values: np.ndarray, names, weights: np.ndarray | None = None) -> dict[str, float | None]:
    """{stat: value in ms} of `values` (s); weighted percentiles when `weights` are given; None if empty."""
    total = len(values) if weights is None else float(weights.sum())
    if not total:
        return {s: None for s in names}
    if weights is None:
        mean, pct = float(values.mean()), {s: float(np.percentile(values, _PERCENT[s])) for s in names[1:]}
    else:
        mean = float(np.sum(values * weights) / total)
        pct = dict(
            zip(
                names[1:],
                weighted_percentiles(values, weights, tuple(_PERCENT[s] for s in names[1:])),
                strict=True,
            )
        )
    return {"mean": mean * 1e3, **{s: v * 1e3 for s, v in pct.items()}}


def itl_gaps(
    rep: ServingReplay, end_s: np.ndarray, first_s: np.ndarray, served: np.ndarray, multi: np.ndarray
):
    """(gaps s, weights) of every pair of consecutive tokens (module doc): decode iterations' gaps weighted by
    their decodes, less each request's first gap, which is added on its own."""
    decoding = np.flatnonzero(rep.batch > 0)
    if not len(decoding):
        return np.zeros(0), np.zeros(0)
    prev_end = np.concatenate([[rep.start_s[decoding[0]]], end_s[decoding[:-1]]])
    gaps = end_s[decoding] - prev_end
    weights = rep.batch[decoding].astype(float)
    # each multi-token request's second token: the first decode iteration after its first token's
    k_first = rep.first_token_iteration[served][multi]
    pos = np.minimum(np.searchsorted(decoding, k_first, side="right"), len(decoding) - 1)
    np.subtract.at(weights, pos, 1.0)
    first_gaps = end_s[decoding[pos]] - first_s[multi]
    return np.concatenate([gaps, first_gaps]), np.concatenate([np.maximum(weights, 0.0), np.ones(len(pos))])


def latency_stats(
    rep: ServingReplay,
    output_len: np.ndarray,
    arrival_s: np.ndarray,
    end_s: np.ndarray,
    first_s: np.ndarray | None = None,
    scheduled_s: np.ndarray | None = None,
    decode_only: bool = False,
) -> dict[str, float | None]:
    """Every field of `latency_fields()` over the served requests (module doc). `first_s` / `scheduled_s`:
    per-request first-token and first-scheduled times when prefill ran elsewhere (a prefill pool)."""
    served = np.flatnonzero(rep.finish_iteration >= 0)
    arrival = np.asarray(arrival_s, dtype=float)[served]
    first = end_s[rep.first_token_iteration[served]] if first_s is None else first_s[served]
    last = end_s[rep.finish_iteration[served]]
    tokens = np.asarray(output_len, dtype=np.int64)[served]
    multi = tokens > 1
    start = rep.start_s[rep.admit_iteration[served]] if scheduled_s is None else scheduled_s[served]
    series = {
        "ttft": (first - arrival, None),
        "tpot": ((last - first)[multi] / (tokens[multi] - 1), None),
        "itl": itl_gaps(rep, end_s, first, served, multi) if len(served) else (np.zeros(0), None),
        "e2el": (last - arrival, None),
    }
    out: dict[str, float | None] = {}
    for kind, (values, weights) in series.items():
        stats = _stats(values, LATENCY_STATS, weights)
        if decode_only and kind in ("ttft", "e2el"):
            stats = dict.fromkeys(stats)
        out.update({f"{s}_{kind}_ms": v for s, v in stats.items()})
    queue = _stats(start - arrival, QUEUEING_STATS)
    out.update({f"{s}_queueing_delay_ms": v for s, v in queue.items()})
    return out


def good_requests(
    rep: ServingReplay, output_len, arrival_s, end_s, first_s=None, ttft_slo_ms=None, tpot_slo_ms=None
) -> int:
    """Served requests whose TTFT and TPOT meet the SLOs given (module doc)."""
    served = np.flatnonzero(rep.finish_iteration >= 0)
    first = end_s[rep.first_token_iteration[served]] if first_s is None else first_s[served]
    last = end_s[rep.finish_iteration[served]]
    tokens = np.asarray(output_len, dtype=np.int64)[served]
    ok = np.ones(len(served), dtype=bool)
    if ttft_slo_ms is not None:
        ok &= (first - np.asarray(arrival_s, dtype=float)[served]) * 1e3 <= ttft_slo_ms
    if tpot_slo_ms is not None:
        tpot = (last - first) / np.maximum(tokens - 1, 1)
        ok &= (tokens <= 1) | (tpot * 1e3 <= tpot_slo_ms)
    return int(ok.sum())


def check_slos(ttft_slo_ms: float | None, tpot_slo_ms: float | None) -> None:
    """UserInputError unless each SLO given is a positive finite number of ms."""
    for name, value in (("--ttft-slo-ms", ttft_slo_ms), ("--tpot-slo-ms", tpot_slo_ms)):
        if value is not None and not 0 < value < math.inf:
            raise UserInputError(f"{name} must be a positive finite number of ms, got {value}")


def serving_metrics(
    rep, end_s, output_len, prompt_len, arrival_s, paged: bool, pool=None, slo_ms=(None, None)
):
    """Latencies (`latency_fields()`), the whole-run rates and the goodput at `slo_ms` = (TTFT, TPOT) of a
    replay (module doc); `pool`: the prefill pool's `PrefillSchedule` when prompts were prefilled there;
    `paged` False (reserve-all): decode only."""
    first_s, scheduled_s = (None, None) if pool is None else (pool.token_s, pool.start_s)
    out = latency_stats(rep, output_len, arrival_s, end_s, first_s, scheduled_s, decode_only=not paged)
    makespan, tokens = rep.end_s, int(rep.generated.sum())
    served = rep.finish_iteration >= 0
    prompt = int(np.asarray(prompt_len)[served].sum()) if prompt_len is not None else 0
    good = None
    if paged and any(v is not None for v in slo_ms):
        good = good_requests(rep, output_len, arrival_s, end_s, first_s, *slo_ms)

    def rate(x):
        return None if x is None or makespan <= 0 else x / makespan

    return {
        **out,
        "request_throughput": rate(int(served.sum())),
        "output_throughput": rate(tokens),
        "total_token_throughput": rate(tokens + prompt),
        "request_goodput": rate(good),
        "ttft_slo_ms": slo_ms[0],
        "tpot_slo_ms": slo_ms[1],
    }
