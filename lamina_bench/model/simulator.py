"""Trace-driven serving simulation of a system on a device mix: replay + iteration model -> metrics.

The scheduler is the system's (`SystemConfig.scheduler`, model/scheduler.py):
  reserve-all (default): decode only, the paper's throughput setting; prompts occupy KV but prefill time
      is excluded; each generated token costs one decode iteration whose attention reads the request's
      current context (prompt + tokens generated so far). Replay: `model/replay.py`.
  vllm: vLLM V1's paged scheduler with prefill, preemption by recompute and CPU overhead
      (`model/paged_replay.py`, iteration time with prefill `model/prefill.py`); prefill colocated
      (chunked or separate iterations) or on a prefill pool of its own (`model/prefill_pool.py`: FIFO on
      its devices, KV streamed layer by layer to the KV side over the link, counted in the link's bytes
      and rates; the pool's devices count in the cost). Replays that follow arrivals time iterations
      with the tabulated model (`model/serving_time.py`).
Decode iteration time: `model/iteration.py`.

Arrival modes: saturate (every request queued at t = 0), trace (the trace's timestamps), poisson (at a
rate, seeded), concurrency (a closed loop of N clients, each sending its next request, in trace order, as
soon as its previous one finished; the trace's timestamps are ignored, its lengths kept). Throughput has
one definition per mode (model/summary.py): saturate the saturated phase, concurrency the closed-loop
phase, trace and poisson the whole trace; `throughput_basis` names it in `to_dict()` and in the rows.
Per-request latencies, queueing delay, request / output / total token throughput and goodput at a TTFT and
TPOT SLO carry vLLM's benchmark names (model/summary.py); reserve-all leaves TTFT, E2EL and goodput empty.
"""

from __future__ import annotations

import numpy as np

from lamina_bench.catalog.models import (
    dense_flops_per_token,
    kv_bytes_per_token,
    net_bytes_per_token_per_layer,
)
from lamina_bench.catalog.moe import is_moe
from lamina_bench.catalog.workloads import Trace, check_request_count, poisson_arrivals
from lamina_bench.errors import UserInputError
from lamina_bench.model.cost import mixes_cost_usd_per_hour, price_set_label, tokens_per_usd, usd_per_mtok
from lamina_bench.model.iteration import IterationBreakdown, IterationModel, iteration_model
from lamina_bench.model.moe_iteration import moe_flops_per_token, moe_link_bytes_per_token
from lamina_bench.model.paged_replay import ServingReplay, paged_replay
from lamina_bench.model.prefill import ServingIterationModel
from lamina_bench.model.prefill_pool import PrefillPool, PrefillSchedule, prefill_pool, streamed_kv
from lamina_bench.model.replay import Replay, replay
from lamina_bench.model.result import SimulationResult, ratio
from lamina_bench.model.roofline import attention_layer_bytes
from lamina_bench.model.serving_time import ServingTimeTable, time_table
from lamina_bench.model.summary import (
    check_slos,
    closed_loop_arrivals,
    phase_end,
    phase_rates,
    release_by_finish_order,
    serving_metrics,
    weighted_percentiles,
)
from lamina_bench.model.system import SystemConfig, memory_plan

ARRIVALS = ("saturate", "trace", "poisson", "concurrency")
BASIS = {"saturate": "saturated phase", "concurrency": "closed-loop phase"}  # else "whole trace"


def summarize(
    config: SystemConfig,
    model: IterationModel,
    trace_name: str,
    arrival: str,
    rep: ServingReplay,
    bd: IterationBreakdown,
    kv_capacity_tokens: int,
    output_len: np.ndarray,
    arrival_s: np.ndarray,
    concurrency: int | None = None,
    prompt_len: np.ndarray | None = None,
    pool: tuple[PrefillPool, PrefillSchedule] | None = None,
    slo_ms: tuple[float | None, float | None] = (None, None),
) -> SimulationResult:
    """Metrics of a replay and its per-iteration breakdown `bd` (see SimulationResult, model/summary.py);
    `pool`: the prefill pool and when it prefilled each request; `slo_ms`: (TTFT, TPOT) SLOs of the
    goodput."""
    spec = config.model
    decode_tokens = int(rep.batch.sum())
    prefill_tokens = int(rep.prefill_tokens.sum())
    tokens = int(rep.generated.sum())
    makespan = rep.end_s
    served = int(np.count_nonzero(rep.admit_iteration >= 0))
    tbt = [None] * 4
    if decode_tokens:
        mean_ms = float(np.sum(bd.time_s * rep.batch) / decode_tokens * 1e3)
        tbt = [mean_ms] + [v * 1e3 for v in weighted_percentiles(bd.time_s, rep.batch, (50, 90, 99))]
    lamina, pooled = config.system == "lamina", config.system != "homogeneous"
    net_per_token = (
        float(net_bytes_per_token_per_layer(spec, config.dtype) * spec.num_layers) if lamina else 0.0
    )
    if is_moe(spec):  # per-token traffic and flops of a mixture-of-experts model (model/moe_iteration.py)
        net_per_token = moe_link_bytes_per_token(spec, config.system, config.dtype)
    kv_per_token = float(kv_bytes_per_token(spec, config.dtype)) if lamina else 0.0  # prefill KV to the pool
    link_bytes = rep.batch * net_per_token + rep.prefill_tokens * kv_per_token
    end_s = rep.start_s + rep.time_s
    rate_gbps = link_bytes * 8 / np.maximum(bd.time_s, 1e-30) / 1e9
    pool_mix = None if pool is None else pool[0].mix
    if pool is not None and rep.iterations:  # the pool's KV as it streams (model/prefill_pool.py)
        streamed, streamed_gbps = streamed_kv(pool[1], rep.admit_iteration >= 0, end_s)
        link_bytes, rate_gbps = link_bytes + streamed, rate_gbps + streamed_gbps
    cost = mixes_cost_usd_per_hour(config.compute, config.attention, pool_mix)
    throughput = tokens / makespan if makespan > 0 else 0.0
    kv_pool = config.attention or config.compute
    peak_flops = config.compute.device.bf16_flops_per_s
    peak_bw = kv_pool.device.mem_bandwidth_bytes_per_s
    if is_moe(spec):
        kv_bytes = float(kv_bytes_per_token(spec, config.dtype) * rep.sum_context.sum())
        flops_per_token = moe_flops_per_token(spec)
    else:
        kv_bytes = (
            float(attention_layer_bytes(spec, config.dtype, 0.0, rep.sum_context.sum())) * spec.num_layers
        )
        flops_per_token = dense_flops_per_token(spec)
    sat_tput, sat_batch = phase_rates(rep, bd.time_s, phase_end(rep, arrival))
    mean_ms = {
        k: float(getattr(bd, k).mean()) * 1e3 if rep.iterations else None
        for k in ("time_s", "dense_s", "attention_s", "network_s", "compute_busy_s", "attention_busy_s")
    }
    schedule = None if pool is None else pool[1]
    pool_prompts = 0 if pool is None else int(np.asarray(prompt_len)[rep.admit_iteration >= 0].sum())
    serving = serving_metrics(
        rep, end_s, output_len, prompt_len, arrival_s, config.scheduler.paged, schedule, slo_ms
    )
    return SimulationResult(
        system=config.system,
        model=spec.name,
        trace=trace_name,
        compute=str(config.compute),
        attention=str(config.attention) if pooled else None,
        dtype=config.dtype,
        pipeline_batches=config.batches,
        arrival=arrival,
        max_batch_limit=config.max_batch_size,
        requests=served,
        rejected_requests=len(rep.admit_iteration) - served,
        generated_tokens=tokens,
        iterations=rep.iterations,
        makespan_s=makespan,
        throughput_tok_per_s=throughput,
        mean_batch_size=tokens / rep.iterations if rep.iterations else None,
        saturated_throughput_tok_per_s=sat_tput,
        saturated_mean_batch_size=sat_batch,
        max_batch_size=int(rep.batch.max()) if rep.iterations else 0,
        tbt_mean_ms=tbt[0],
        tbt_p50_ms=tbt[1],
        tbt_p90_ms=tbt[2],
        tbt_p99_ms=tbt[3],
        kv_capacity_tokens=kv_capacity_tokens,
        kv_peak_tokens=int(rep.kv_used_tokens.max()) if rep.iterations else 0,
        cost_usd_per_hour=cost,
        price_set=price_set_label(config.compute, config.attention, pool_mix),
        tokens_per_usd=tokens_per_usd(throughput, cost),
        usd_per_mtok=usd_per_mtok(throughput, cost),
        saturated_tokens_per_usd=None if sat_tput is None else tokens_per_usd(sat_tput, cost),
        net_bytes_per_token=net_per_token,
        net_peak_gbps=float(rate_gbps.max()) if (pooled or pool is not None) and rep.iterations else 0.0,
        net_mean_gbps=float(link_bytes.sum()) * 8 / makespan / 1e9 if makespan > 0 else 0.0,
        compute_busy_fraction=ratio(float(bd.compute_busy_s.sum()), makespan),
        attention_busy_fraction=ratio(float(bd.attention_busy_s.sum()), makespan) if pooled else None,
        iteration_mean_ms=mean_ms["time_s"],
        dense_mean_ms=mean_ms["dense_s"],
        attention_mean_ms=mean_ms["attention_s"],
        network_mean_ms=mean_ms["network_s"],
        compute_busy_mean_ms=mean_ms["compute_busy_s"],
        attention_busy_mean_ms=mean_ms["attention_busy_s"],
        compute_flops_utilization=None
        if peak_flops is None
        else ratio(
            flops_per_token * (decode_tokens + prefill_tokens),
            makespan * config.compute.count * peak_flops,
        ),
        kv_bandwidth_utilization=None
        if peak_bw is None
        else ratio(kv_bytes, makespan * kv_pool.count * peak_bw),
        source=model.source,
        profile=model.profile,
        scheduler=config.scheduler.label(),
        concurrency=concurrency,
        throughput_basis=BASIS[arrival] if sat_tput is not None else "whole trace",
        preemptions=int(rep.preemptions.sum()),
        prefill_tokens=prefill_tokens + pool_prompts,
        **serving,
        prefill_pool=None if pool is None else str(pool_mix),
        prefill_pool_busy_fraction=None if pool is None else ratio(pool[1].busy_s, makespan),
        prefill_kv_bytes=float(prefill_tokens * kv_per_token)
        + (0.0 if pool is None else float(pool[1].kv_bytes[rep.admit_iteration >= 0].sum())),
    )


def _reserve_all(
    config: SystemConfig, trace: Trace, arrival_s, capacity: int, model: IterationModel, arrival: str,
    concurrency: int | None,
) -> tuple[ServingReplay, IterationBreakdown]:  # fmt: skip
    """Reserve-all replay as a ServingReplay (no prefill, no preemption). A closed loop of N clients is the
    saturate replay with the batch capped at N: the queue head is admitted only while fewer than N run,
    i.e. once a completion has sent it (FIFO admission makes the two the same)."""
    cap = config.max_batch_size
    if concurrency is not None:
        cap = min(cap or concurrency, concurrency)
    r: Replay = replay(
        trace.prompt_len, trace.output_len, arrival_s, capacity, model.time_s, cap,
        follow_arrivals=arrival in ("trace", "poisson"),
    )  # fmt: skip
    zeros = np.zeros_like(r.batch)
    release = None if concurrency is None else release_by_finish_order(r.finish_iteration, concurrency)
    rep = ServingReplay(
        r.batch, r.sum_context, zeros, zeros.astype(np.float64), zeros, zeros, r.kv_reserved_tokens, r.time_s,
        r.start_s, r.admit_iteration, r.admit_iteration, r.finish_iteration,
        np.zeros_like(r.admit_iteration), release,
    )  # fmt: skip
    return rep, model.breakdown(rep.batch, rep.sum_context)


def _paged(
    config: SystemConfig, trace: Trace, arrival_s, capacity: int, model: IterationModel, arrival: str,
    concurrency: int | None, prefilled: bool = False,
) -> tuple[ServingReplay, IterationBreakdown]:  # fmt: skip
    """vLLM replay; `prefilled`: requests arrive at `arrival_s` with their prompt prefilled elsewhere."""
    serving = ServingIterationModel(model, config.scheduler)
    last: list[IterationBreakdown] = []

    def time_fn(*work) -> np.ndarray:  # keeps the breakdown: without arrivals to follow, the one call
        last[:] = [serving.breakdown(*work)]  # covers every iteration
        return last[0].time_s

    follow = arrival in ("trace", "poisson") or prefilled
    if follow:  # times as the replay goes: the tabulated model (model/serving_time.py)
        time_fn = _time_table(model, config, capacity, trace)
    rep = paged_replay(
        trace.prompt_len, trace.output_len, arrival_s, capacity, time_fn, config.scheduler,
        config.max_batch_size, follow_arrivals=follow, concurrency=concurrency, prefilled=prefilled,
    )  # fmt: skip
    if follow or not last:
        last[:] = [serving.breakdown(rep.batch, rep.sum_context, rep.prefill_tokens, rep.prefill_pairs,
                                     rep.prefill_seqs, rep.first_tokens)]  # fmt: skip
    return rep, last[0]


def _time_table(model: IterationModel, config: SystemConfig, capacity: int, trace: Trace) -> ServingTimeTable:
    """The time table covering `trace`'s longest request (rounded up to a power of two, so that traces of
    similar lengths share one table) within the KV capacity."""
    policy = config.scheduler
    max_seqs = min(policy.max_num_seqs, config.max_batch_size or policy.max_num_seqs)
    longest = int((trace.prompt_len + trace.output_len).max()) if len(trace) else 1
    return time_table(model, policy, max_seqs, min(int(capacity), 1 << max(10, (longest - 1).bit_length())))


def simulate(
    config: SystemConfig,
    trace: Trace,
    arrival: str = "saturate",
    rate_per_s: float | None = None,
    seed: int = 0,
    requests: int | None = None,
    model: IterationModel | None = None,
    concurrency: int | None = None,
    ttft_slo_ms: float | None = None,
    tpot_slo_ms: float | None = None,
    prefill_model: IterationModel | None = None,
) -> SimulationResult:
    """Replay `trace` (its first `requests`) on `config` under its scheduler; deterministic for a seed.

    arrival: "saturate" (all queued at t=0), "trace" (the trace's timestamps), "poisson" (at `rate_per_s`,
    seeded) or "concurrency" (closed loop of `concurrency` clients). `model` defaults to
    `iteration_model(config)` (stored profiles or roofline); `prefill_model` is the prefill pool's (if the
    scheduler names one; model/prefill_pool.py). The SLOs (ms) give `request_goodput` (vllm only).
    """
    check_slos(ttft_slo_ms, tpot_slo_ms)
    if arrival not in ARRIVALS:
        raise UserInputError(f"unknown arrival mode {arrival!r}; valid: {', '.join(ARRIVALS)}")
    if requests is not None:
        if requests < 1:
            raise UserInputError(f"--requests must be >= 1, got {requests}")
        check_request_count(requests, trace)
        trace = trace.head(requests)
    if arrival == "concurrency":
        if concurrency is None or isinstance(concurrency, bool) or concurrency < 1:
            raise UserInputError(f"arrival mode 'concurrency' needs --concurrency >= 1, got {concurrency}")
    elif concurrency is not None:
        raise UserInputError("--concurrency applies to --arrival concurrency only")
    if arrival == "poisson":
        if rate_per_s is None:
            raise UserInputError("arrival mode 'poisson' needs a rate (requests/s), e.g. --rate 5")
        arrival_s = poisson_arrivals(len(trace), rate_per_s, seed)
    else:
        arrival_s = trace.arrival_s
    if arrival == "saturate":
        arrival_s = np.zeros(len(trace))
    plan = memory_plan(config)
    model = model or iteration_model(config)
    pool = prefill_pool(config, model, prefill_model)
    if pool is not None:
        if arrival == "concurrency":
            raise UserInputError(
                "a prefill pool is modelled for open-loop arrivals only (saturate, trace, poisson)"
            )
        schedule = pool.schedule(trace.prompt_len, arrival_s)
        ready = np.maximum.accumulate(schedule.ready_s)  # FIFO hand-over to the decode side
        rep, bd = _paged(config, trace, ready, plan.kv_capacity_tokens, model, arrival, None, prefilled=True)
    else:
        run = _paged if config.scheduler.paged else _reserve_all
        rep, bd = run(config, trace, arrival_s, plan.kv_capacity_tokens, model, arrival, concurrency)
    if arrival == "concurrency":
        arrival_s = closed_loop_arrivals(rep, rep.start_s + rep.time_s)
    return summarize(
        config, model, trace.name, arrival, rep, bd, plan.kv_capacity_tokens, trace.output_len, arrival_s,
        concurrency, trace.prompt_len, None if pool is None else (pool, schedule), (ttft_slo_ms, tpot_slo_ms),
    )  # fmt: skip
