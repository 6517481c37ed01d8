"""Commands on the catalogs and the performance model: models, hardware, simulate, capacity, search."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from lamina_bench.catalog.devices import parse_mix
from lamina_bench.catalog.local import local_devices
from lamina_bench.catalog.models import derived_sizes, dtype_bytes, get_model, list_models
from lamina_bench.catalog.moe import is_moe
from lamina_bench.catalog.prices import DEFAULT_PRICE_SET, PAPER_PRICE_SET, get_price_set
from lamina_bench.catalog.workloads import load_trace, synthetic_trace
from lamina_bench.cli.common import add_catalog_arguments, catalog_of, given
from lamina_bench.errors import UserInputError
from lamina_bench.model.capacity import DEFAULT_CAPACITY_REQUESTS, DEFAULT_REL_TOL, capacity
from lamina_bench.model.cost import require_prices
from lamina_bench.model.iteration import iteration_model
from lamina_bench.model.paper import paper_comparisons
from lamina_bench.model.prefill_pool import prefill_pool
from lamina_bench.model.scheduler import PREFILL_MODES, SCHEDULERS, Scheduler, scheduler_named
from lamina_bench.model.search import search
from lamina_bench.model.simulator import simulate
from lamina_bench.model.system import SystemConfig, memory_plan
from lamina_bench.report.catalog_text import hardware_text, models_text
from lamina_bench.report.text import (
    comparisons_markdown,
    result_table,
    search_table,
)
from lamina_bench.sweep.mappers import mapper_named

# ---- catalogs ------------------------------------------------------------------------------------


def add_models(sub) -> None:
    p = sub.add_parser("models", help="model catalog with derived sizes")
    p.add_argument("--dtype", default="fp16", help="dtype for byte sizes: fp32 | fp16 | bf16 | fp8")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_models)


def _run_models(args) -> int:
    dtype_bytes(args.dtype)  # validates (case-insensitive)
    dtype = args.dtype.lower()
    rows = [(spec, derived_sizes(spec, dtype)) for spec in list_models()]
    if args.json:
        print(json.dumps([{**dataclasses.asdict(s), **d, "dtype": dtype} for s, d in rows], indent=1))
    else:
        print(models_text(rows, dtype))
    return 0


def add_hardware(sub) -> None:
    p = sub.add_parser("hardware", help="device catalog (specs, prices, sources) and the local devices")
    add_catalog_arguments(p)
    p.add_argument("--sources", action="store_true", help="print the source and date of every value")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_hardware)


def _run_hardware(args) -> int:
    catalog = catalog_of(args)
    local = local_devices(catalog)
    prices = get_price_set(args.prices or DEFAULT_PRICE_SET)
    if args.json:

        def as_json(d) -> dict:
            return {f.name: getattr(d, f.name) for f in dataclasses.fields(d)} | {"sources": dict(d.sources)}

        catalog_json = [as_json(d) for d in catalog.values()]
        local_json = [as_json(d) for d in local]
        print(json.dumps({"prices": prices.name, "catalog": catalog_json, "local": local_json}, indent=1))
    else:
        print(hardware_text(catalog, local, args.sources, prices.label()))
    return 0


# ---- modeled: simulate, search ----------------------------------------------------------------------


def add_simulate(sub) -> None:
    p = sub.add_parser(
        "simulate",
        help="modeled decode of a trace on a device mix (homogeneous, Lamina, AFD), or the paper's table",
        description="Trace-driven simulation from measured profiles (results/profiles/) or the roofline. "
        "--paper prints the paper's nine equal-cost comparisons as a markdown table.",
    )
    p.add_argument("--paper", action="store_true", help="the nine comparisons (3 models x 3 traces)")
    p.add_argument("--model", help="model slug, e.g. llama3-70b (see `lamina-bench models`)")
    p.add_argument("--system", help="homogeneous | lamina | afd (mixture-of-experts models)")
    p.add_argument("--compute", help="compute mix NxDEVICE, e.g. 2xH100 (homogeneous: the TP group)")
    p.add_argument("--attention", help="Lamina or AFD attention mix NxDEVICE, e.g. 4xH20")
    p.add_argument(
        "--experts", help="AFD expert mix NxDEVICE, e.g. 8xH100 (the expert pool; instead of --compute)"
    )
    p.add_argument(
        "--routing-skew", type=float, help="MoE: load of the busiest expert device / its mean (default 1)"
    )
    p.add_argument("--trace", help="azure-conv | azure-code | kimi-conv")
    p.add_argument("--input-len", type=int, help="instead of --trace: every request has this prompt length")
    p.add_argument(
        "--output-len", type=int, help="instead of --trace: every request generates this many tokens"
    )
    p.add_argument(
        "--requests",
        type=int,
        help="first N requests of the trace (default: all); N requests of fixed lengths",
    )
    p.add_argument("--arrival", help="saturate (default) | trace | poisson | concurrency")
    p.add_argument("--rate", type=float, help="Poisson arrival rate, requests/s")
    p.add_argument("--seed", type=int, help="seed of the Poisson arrivals")
    p.add_argument("--concurrency", type=int, help="--arrival concurrency: clients of the closed loop")
    d = Scheduler("vllm")  # the defaults live in model/scheduler.py
    p.add_argument(
        "--scheduler", help=f"{' | '.join(SCHEDULERS)} (default {Scheduler().name}; model/scheduler.py)"
    )
    p.add_argument("--max-num-seqs", type=int, help=f"vllm: most running requests (default {d.max_num_seqs})")
    p.add_argument(
        "--max-num-batched-tokens",
        type=int,
        help=f"vllm: most tokens per iteration (default {d.max_num_batched_tokens})",
    )
    p.add_argument(
        "--gpu-memory-utilization",
        type=float,
        help=f"vllm: share of memory for weights + KV (default {d.gpu_memory_utilization:g})",
    )
    p.add_argument("--block-size", type=int, help=f"vllm: tokens per KV block (default {d.block_size})")
    p.add_argument("--prefill", help=f"vllm: {' | '.join(PREFILL_MODES)} (default {d.prefill})")
    _add_serving_arguments(p)
    p.add_argument("--pipeline-batches", type=int, help="Lamina: 1 none, 2 ping-pong (default), >2 rotate")
    p.add_argument("--max-batch", type=int, help="cap on running requests")
    p.add_argument("--dtype", help="fp16 (default) | bf16")
    add_catalog_arguments(p, f"{DEFAULT_PRICE_SET}; with --paper, {PAPER_PRICE_SET}")
    p.add_argument("--profile-dir", help="folder of <device>-<backend>.json profiles (results/profiles)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_simulate)


# Options of one simulation that --paper (nine fixed setups) would silently ignore.
_SINGLE_RUN_OPTIONS = ("model", "system", "compute", "attention", "trace", "arrival", "rate", "seed")
_SINGLE_RUN_OPTIONS += ("pipeline_batches", "max_batch", "concurrency", "input_len", "output_len")
_SINGLE_RUN_OPTIONS += ("experts", "routing_skew")
_SINGLE_RUN_OPTIONS += ("prefill_pool", "ttft_slo_ms", "tpot_slo_ms")  # --paper is decode only


def _add_serving_arguments(p) -> None:
    """The prefill pool and the SLOs (simulate and capacity)."""
    p.add_argument(
        "--prefill-pool",
        help="vllm: prefill on its own NxDEVICE pool, KV sent to the decode side (model/prefill_pool.py)",
    )
    p.add_argument("--ttft-slo-ms", type=float, help="time-to-first-token SLO, ms (goodput; capacity: p99)")
    p.add_argument("--tpot-slo-ms", type=float, help="time-per-output-token SLO, ms (goodput; capacity: p99)")


def _run_simulate(args) -> int:
    catalog = catalog_of(args, PAPER_PRICE_SET if args.paper else DEFAULT_PRICE_SET)
    if args.profile_dir is not None and (args.profile_dir == "" or not Path(args.profile_dir).is_dir()):
        raise UserInputError(
            f"--profile-dir {args.profile_dir} is not a folder (it holds <device>-<backend>.json)"
        )
    if args.paper:
        if args.dtype not in (None, "fp16"):
            raise UserInputError("--paper reproduces the paper's fp16 setting; drop --dtype")
        ignored = [f"--{o.replace('_', '-')}" for o in _SINGLE_RUN_OPTIONS if getattr(args, o) is not None]
        if ignored:
            raise UserInputError(
                f"--paper runs the paper's nine fixed setups; drop {', '.join(ignored)} "
                "(with --paper only --requests, --devices-file, --profile-dir, --json and the --scheduler options apply)"
            )
        rows = paper_comparisons(
            requests=args.requests, catalog=catalog, profile_dir=args.profile_dir, scheduler=_scheduler(args)
        )
        if args.json:
            print(
                json.dumps(
                    [
                        {
                            "model": c.model,
                            "trace": c.trace,
                            "homogeneous": c.homogeneous.to_dict(),
                            "lamina": c.lamina.to_dict(),
                        }
                        for c in rows
                    ]
                )
            )
        else:
            print(comparisons_markdown(rows))
        return 0
    config, model, prefill_model = _configured(args, catalog, "simulate")
    trace = _workload(args)
    if (args.rate is not None or args.seed is not None) and args.arrival != "poisson":
        raise UserInputError("--rate and --seed apply to --arrival poisson only")
    result = simulate(
        config,
        trace,
        model=model,
        prefill_model=prefill_model,
        **given(args, arrival="arrival", rate_per_s="rate", seed="seed", requests="requests",
                concurrency="concurrency", ttft_slo_ms="ttft_slo_ms", tpot_slo_ms="tpot_slo_ms"),
    )  # fmt: skip
    print(result.to_json() if args.json else result_table(result))
    return 0


def _configured(args, catalog, command: str):
    """(SystemConfig, its iteration model, the prefill pool's model or None) of the options; every check
    (fit, prices, the pool) before anything runs."""
    _expert_pool(args)
    missing = [o for o in ("model", "system", "compute") if getattr(args, o) is None]
    if missing:
        raise UserInputError(
            f"{command} needs --{', --'.join(missing)}" + (" (or --paper)" if command == "simulate" else "")
        )
    config = SystemConfig(
        args.system,
        get_model(args.model),
        parse_mix(args.compute, catalog),
        parse_mix(args.attention, catalog) if args.attention else None,
        scheduler=_scheduler(args, catalog),
        **given(args, dtype="dtype", pipeline_batches="pipeline_batches", max_batch_size="max_batch",
                routing_skew="routing_skew"),
    )  # fmt: skip
    memory_plan(config)  # a mix the weights do not fit: one-line error before anything else
    pool = config.scheduler.prefill_pool
    require_prices(args.prices or DEFAULT_PRICE_SET, config.compute, config.attention, pool)
    model = iteration_model(config, profile_dir=args.profile_dir)
    pool_model = prefill_pool(config, model, profile_dir=args.profile_dir)  # checks that its weights fit
    return config, model, None if pool_model is None else pool_model.serving.base


def _expert_pool(args) -> None:
    """--experts names AFD's expert pool, which the simulator holds as the compute mix."""
    if args.experts is None:
        return
    if args.system != "afd":
        raise UserInputError("--experts names the expert pool of --system afd; other systems take --compute")
    if args.compute is not None:
        raise UserInputError("give the AFD expert pool once: --experts or --compute, not both")
    args.compute = args.experts


_VLLM_KNOBS = {
    "max_num_seqs": "max_num_seqs",
    "max_num_batched_tokens": "max_num_batched_tokens",
    "gpu_memory_utilization": "gpu_memory_utilization",
    "block_size": "block_size",
    "prefill": "prefill",
}


def _scheduler(args, catalog=None):
    """The scheduler of --scheduler with the vLLM knobs and the prefill pool given (an error for
    reserve-all)."""
    knobs = given(args, **_VLLM_KNOBS)
    if getattr(args, "prefill_pool", None) is not None:
        knobs["prefill_pool"] = parse_mix(args.prefill_pool, catalog)
    return scheduler_named(args.scheduler or "reserve-all", **knobs)


def _workload(args):
    """--trace, or requests of fixed lengths (--input-len, --output-len, --requests)."""
    fixed = [o for o in ("input_len", "output_len") if getattr(args, o) is not None]
    if args.trace is not None:
        if fixed:
            raise UserInputError("give either --trace or --input-len/--output-len, not both")
        return load_trace(args.trace)
    if len(fixed) < 2 or args.requests is None:
        raise UserInputError("simulate needs --trace, or --input-len, --output-len and --requests")
    for name in ("input_len", "output_len", "requests"):
        if getattr(args, name) < 1:
            raise UserInputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return synthetic_trace(args.requests, args.input_len, args.output_len)


def add_capacity(sub) -> None:
    p = sub.add_parser(
        "capacity",
        help="highest Poisson request rate whose p99 TTFT and p99 TPOT meet an SLO, and USD per M tokens there",
        description="Bracketing and bisection over the Poisson rate with a fixed seed (model/capacity.py); "
        "scheduler vllm, prefill colocated or on --prefill-pool. Modeled.",
    )
    p.add_argument("--model", help="model slug, e.g. llama3-70b")
    p.add_argument("--system", help="homogeneous | lamina")
    p.add_argument("--compute", help="compute mix NxDEVICE")
    p.add_argument("--attention", help="Lamina attention mix NxDEVICE")
    p.add_argument("--trace", required=True, help="request lengths: azure-conv | azure-code | kimi-conv")
    p.add_argument(
        "--requests", type=int, help=f"first N requests of the trace (default {DEFAULT_CAPACITY_REQUESTS})"
    )
    p.add_argument("--seed", type=int, help="seed of the Poisson arrivals (default 0)")
    p.add_argument(
        "--tolerance", type=float, help=f"relative width the search stops at (default {DEFAULT_REL_TOL:g})"
    )
    _add_serving_arguments(p)
    d = Scheduler("vllm")
    p.add_argument("--max-num-seqs", type=int, help=f"most running requests (default {d.max_num_seqs})")
    p.add_argument(
        "--max-num-batched-tokens",
        type=int,
        help=f"most tokens per iteration (default {d.max_num_batched_tokens})",
    )
    p.add_argument(
        "--gpu-memory-utilization",
        type=float,
        help=f"share of memory for weights + KV (default {d.gpu_memory_utilization:g})",
    )
    p.add_argument("--block-size", type=int, help=f"tokens per KV block (default {d.block_size})")
    p.add_argument("--prefill", help=f"colocated prefill: {' | '.join(PREFILL_MODES)} (default {d.prefill})")
    p.add_argument("--pipeline-batches", type=int, help="Lamina: 1 none, 2 ping-pong (default), >2 rotate")
    p.add_argument("--max-batch", type=int, help="cap on running requests")
    p.add_argument("--dtype", help="fp16 (default) | bf16")
    add_catalog_arguments(p)
    p.add_argument("--profile-dir", help="folder of <device>-<backend>.json profiles (results/profiles)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_capacity, scheduler="vllm", experts=None, routing_skew=None)  # no MoE: vllm only


def _run_capacity(args) -> int:
    catalog = catalog_of(args)
    if args.profile_dir is not None and (args.profile_dir == "" or not Path(args.profile_dir).is_dir()):
        raise UserInputError(
            f"--profile-dir {args.profile_dir} is not a folder (it holds <device>-<backend>.json)"
        )
    if args.model is not None and is_moe(get_model(args.model)):
        raise UserInputError(
            f"capacity runs the vllm scheduler, which models dense models only; {args.model} is a "
            "mixture-of-experts model (simulate and search take it with the reserve-all scheduler)"
        )
    config, model, prefill_model = _configured(args, catalog, "capacity")
    result = capacity(
        config, load_trace(args.trace), args.ttft_slo_ms, args.tpot_slo_ms, model=model, prefill_model=prefill_model,
        **given(args, requests="requests", seed="seed", rel_tol="tolerance"),
    )  # fmt: skip
    print(json.dumps(result.to_dict()) if args.json else _capacity_text(result))
    return 0


def _capacity_text(r) -> str:
    """The capacity, its cost, the replay at that rate and every probe of the search."""

    def num(v, fmt=",.4g"):
        return "n/a" if v is None else format(v, fmt)

    head = f"capacity of {r.config}, {r.model} on {r.trace} (first {r.requests} requests, Poisson, seed {r.seed}), "
    head += f"SLO p99 TTFT <= {r.ttft_slo_ms:g} ms and p99 TPOT <= {r.tpot_slo_ms:g} ms ({r.source})"
    if r.rate_per_s is None:
        return (
            head
            + "\n\nno rate tried meets the SLO (lowest tried: "
            + num(min(p.rate_per_s for p in r.probes))
            + " req/s)"
        )
    bound = "" if r.bounded else " (every rate tried met the SLO: at least this)"
    a = r.at_capacity
    lines = [head, "",
             f"capacity_req_per_s     {num(r.rate_per_s)}{bound} (within {r.rel_tol:.0%} of the first rate that misses)",
             f"capacity_usd_per_mtok  {num(r.usd_per_mtok)} (at {num(r.cost_usd_per_hour)} USD/h)",
             f"p99 TTFT / TPOT ms     {num(a.p99_ttft_ms)} / {num(a.p99_tpot_ms)}",
             f"output_throughput      {num(a.output_throughput)} tok/s", "", "probes (rate req/s, p99 TTFT ms, p99 TPOT ms, meets):"]  # fmt: skip
    lines += [f"  {num(p.rate_per_s)}  {num(p.p99_ttft_ms)}  {num(p.p99_tpot_ms)}  {'yes' if p.feasible else 'no'}"
              for p in sorted(r.probes, key=lambda p: p.rate_per_s)]  # fmt: skip
    return "\n".join(lines)


def add_search(sub) -> None:
    p = sub.add_parser(
        "search",
        help="best tokens per dollar (homogeneous, Lamina; AFD for MoE models) under a TBT SLO, budget",
    )
    p.add_argument("--model", required=True, help="model slug, e.g. llama3-70b")
    p.add_argument("--trace", required=True, help="azure-conv | azure-code | kimi-conv")
    p.add_argument("--tbt-slo-ms", type=float, help="p99 time between tokens, ms")
    p.add_argument("--budget-usd-per-hour", type=float, help="most the whole mix may cost per hour")
    p.add_argument("--devices", help="comma-separated catalog devices (default: all with specs and a price)")
    p.add_argument("--requests", type=int, help="replay the first N requests of the trace")
    p.add_argument("--top", type=int, default=15, help="rows of the ranked table to print")
    p.add_argument(
        "--rank-by",
        help="tokens_per_usd (default) | capacity: USD per M output tokens at the capacity under "
        "--ttft-slo-ms and --tpot-slo-ms (vllm scheduler; model/capacity.py)",
    )
    p.add_argument("--ttft-slo-ms", type=float, help="--rank-by capacity: p99 TTFT SLO, ms")
    p.add_argument("--tpot-slo-ms", type=float, help="--rank-by capacity: p99 TPOT SLO, ms")
    p.add_argument(
        "--executor",
        default="local",
        help="where the estimates, replays and capacities run: local (default: this process) | ray (a Ray "
        "cluster, in batches of tasks; same result; needs lamina-bench[ray])",
    )
    p.add_argument("--address", help="--executor ray: HOST:PORT of the Ray head (default: a private cluster)")
    add_catalog_arguments(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_search)


def _run_search(args) -> int:
    if args.top < 1:
        raise UserInputError(f"--top must be >= 1 (rows of the ranked table), got {args.top}")
    devices = None
    if args.devices is not None:
        devices = [d.strip() for d in args.devices.split(",") if d.strip()]
        if not devices:
            raise UserInputError(f"--devices names no device, got {args.devices!r}; e.g. --devices H100,H20")
    limits = given(
        args, tbt_slo_ms="tbt_slo_ms", budget_usd_per_hour="budget_usd_per_hour", requests="requests",
        rank_by="rank_by", ttft_slo_ms="ttft_slo_ms", tpot_slo_ms="tpot_slo_ms",
    )  # fmt: skip
    with mapper_named(args.executor, args.address) as map_fn:  # Ray, if chosen, joins at the first map
        result = search(
            get_model(args.model),
            load_trace(args.trace),
            devices=devices,
            catalog=catalog_of(args),
            price_set=args.prices or DEFAULT_PRICE_SET,
            map_fn=map_fn,
            **limits,
        )
    print(json.dumps(result.to_dict()) if args.json else search_table(result, args.top))
    return 0
