"""`lamina-bench` command line. Only wiring and formatting live here; each command calls one function.

Every command is registered by an `_add_<name>` function below. Errors that mean bad input
(`UserInputError`, `ConfigError`) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from lamina_bench.errors import UserInputError
from reference_impl.errors import ConfigError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage + exits 2; keep it to one line
        print(f"lamina-bench: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lamina-bench",
        description="Measure, profile and model attention offloading (Lamina) against homogeneous baselines. "
        "Every figure is labelled measured, modeled or derived.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in _COMMANDS:
        add(sub)
    return parser


# ---- commands (each: _add_X registers the parser and sets func; _COMMANDS lists them) ----------


def _add_generate(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="serve a prompt file with the reference implementation (measured on this machine)",
        description="Serve prompts with the reference implementation. Input: JSONL lines "
        '{"prompt_ids": [...], "max_new_tokens": N}. Greedy unless --temperature is given.',
    )
    p.add_argument(
        "--model-dir", required=True, help="Hugging Face checkpoint folder (config.json + safetensors)"
    )
    p.add_argument("--prompts", required=True, help="JSONL prompt file")
    p.add_argument("--system", default="homogeneous", help="homogeneous (baseline) | lamina")
    p.add_argument(
        "--tp", type=int, default=1, help="homogeneous: tensor-parallel processes for the dense part"
    )
    p.add_argument("--compute-workers", type=int, default=1, help="lamina: compute processes (replicas x TP)")
    p.add_argument(
        "--attention-workers", type=int, default=1, help="lamina: attention processes (KV head ranges)"
    )
    p.add_argument(
        "--pipeline-batches", type=int, default=1, help="lamina: 1 none, 2 ping-pong, n rotational"
    )
    p.add_argument("--attention-split", action="store_true", help="lamina: merge the new token's k/v after")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--dtype", default="fp32", help="fp32 | fp16 | bf16")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ignore-eos", action="store_true", help="always generate max_new_tokens")
    p.add_argument("--block-size", type=int, default=16, help="KV cache block size in tokens")
    p.add_argument(
        "--num-blocks", type=int, help="KV cache blocks (default: enough for all requests at once)"
    )
    p.add_argument("--max-batch-size", type=int, help="cap on running requests")
    p.add_argument("--attention-backend", default="auto", help="auto | torch | triton")
    p.add_argument(
        "--json", action="store_true", help="JSONL: one line per request in input order, then a summary line"
    )
    p.set_defaults(func=_run_generate)


def _run_generate(args) -> int:
    from reference_impl.launch import GenerateConfig, generate, read_prompts, run_summary

    if args.system not in ("homogeneous", "lamina"):
        raise UserInputError(f"unknown system {args.system!r}; valid: homogeneous, lamina")
    common = dict(
        model_dir=args.model_dir,
        device=args.device,
        dtype=args.dtype,
        block_size=args.block_size,
        num_blocks=args.num_blocks,
        max_batch_size=args.max_batch_size,
        temperature=args.temperature,
        seed=args.seed,
        ignore_eos=args.ignore_eos,
        attention_backend=args.attention_backend,
    )
    if args.system == "lamina":
        from reference_impl.lamina import LaminaConfig, generate_lamina

        cfg = LaminaConfig(
            compute_workers=args.compute_workers,
            attention_workers=args.attention_workers,
            pipeline_batches=args.pipeline_batches,
            attention_split=args.attention_split,
            **common,
        )
        lamina_run = generate_lamina(cfg, read_prompts(args.prompts))
        run, summary = lamina_run.engine, lamina_run.summary()
    else:
        run = generate(GenerateConfig(system=args.system, tp=args.tp, **common), read_prompts(args.prompts))
        summary = run_summary(run)
    if args.json:
        for c in run.completions:
            print(json.dumps({"prompt_ids": list(c.prompt_ids), "output_ids": list(c.output_ids)}))
        print(json.dumps({"summary": summary}))
        return 0
    for c in run.completions:
        print(
            f"request {c.request_id}: {len(c.prompt_ids)} prompt -> {len(c.output_ids)} new ({c.finish_reason}): {list(c.output_ids)}"
        )
    print(
        f"{summary['requests']} requests, {summary['generated_tokens']} tokens in {summary['wall_s']:.2f} s; "
        f"decode {summary['decode_tok_per_s']:.1f} tok/s (measured), mean decode batch {_fmt(summary['mean_decode_batch'], digits=2)}"
    )
    return 0


def _fmt(value, scale: float = 1.0, digits: int = 1) -> str:
    """A number divided by `scale`, or "n/a" for unknown (never a guessed value)."""
    return "n/a" if value is None else f"{value / scale:,.{digits}f}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    lines = [
        "  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)).rstrip() for r in [headers, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="model catalog with derived sizes")
    p.add_argument("--dtype", default="fp16", help="dtype for byte sizes: fp32 | fp16 | bf16 | fp8")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_models)


def _run_models(args) -> int:
    from dataclasses import asdict

    from lamina_bench.catalog.models import (
        dense_flops_per_token,
        dtype_bytes,
        kv_bytes_per_token,
        list_models,
        net_bytes_per_token_per_layer,
        param_count,
        weight_bytes,
    )

    dtype_bytes(args.dtype)  # validates
    rows = []
    for spec in list_models():
        derived = {
            "params": param_count(spec),
            "weight_bytes": weight_bytes(spec, args.dtype),
            "kv_bytes_per_token": kv_bytes_per_token(spec, args.dtype),
            "dense_flops_per_token": dense_flops_per_token(spec),
            "net_bytes_per_token_per_layer": net_bytes_per_token_per_layer(spec, args.dtype),
        }
        rows.append((spec, derived))
    if args.json:
        print(json.dumps([{**asdict(s), **d, "dtype": args.dtype} for s, d in rows], indent=1))
        return 0
    headers = ["model", "layers", "d", "heads/kv", "ffn", "vocab", "params (B)", f"weights GB ({args.dtype})",
               "KV B/token", "net B/token/layer", "source"]  # fmt: skip
    body = [
        [s.name, s.num_layers, s.hidden_size, f"{s.num_heads}/{s.num_kv_heads}", s.intermediate_size, s.vocab_size,
         _fmt(d["params"], 1e9, 2), _fmt(d["weight_bytes"], 1e9, 1), f"{d['kv_bytes_per_token']:,}",
         f"{d['net_bytes_per_token_per_layer']:,}", s.source]
        for s, d in rows
    ]  # fmt: skip
    print(_table(headers, body))
    print("\nAll sizes derived from the configs (GB = 1e9 bytes).")
    return 0


def _add_hardware(sub) -> None:
    p = sub.add_parser("hardware", help="device catalog (specs, prices, sources) and the local devices")
    p.add_argument("--devices-file", help="TOML file overriding or adding devices ([devices.NAME] tables)")
    p.add_argument("--sources", action="store_true", help="print the source and date of every value")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_hardware)


def _run_hardware(args) -> int:
    from dataclasses import asdict

    from lamina_bench.catalog.devices import load_catalog
    from lamina_bench.catalog.local import local_devices

    catalog = load_catalog(args.devices_file)
    local = local_devices(catalog)
    if args.json:
        as_json = lambda d: {**asdict(d), "sources": dict(d.sources)}  # noqa: E731
        print(
            json.dumps(
                {"catalog": [as_json(d) for d in catalog.values()], "local": [as_json(d) for d in local]},
                indent=1,
            )
        )
        return 0
    headers = [
        "device",
        "bf16 TFLOP/s",
        "memory GB",
        "bandwidth TB/s",
        "power W",
        "link GB/s/dir",
        "NIC Gb/s",
        "$/hour",
    ]
    for title, devices in (("catalog", list(catalog.values())), ("local devices (detected)", local)):
        print(f"{title}:")
        body = [
            [d.name, _fmt(d.bf16_flops_per_s, 1e12, 0), _fmt(d.memory_bytes, 1e9, 0),
             _fmt(d.mem_bandwidth_bytes_per_s, 1e12, 2), _fmt(d.power_w, 1, 0), _fmt(d.intra_link_bytes_per_s, 1e9, 0),
             _fmt(d.nic_gbps, 1, 0), _fmt(d.usd_per_hour, 1, 2)]
            for d in devices
        ]  # fmt: skip
        print(_table(headers, body))
        print()
    if args.sources:
        for d in catalog.values():
            print(f"{d.name} ({d.full_name}):")
            for key, src in d.sources.items():
                print(f"  {key}: {src}")
    else:
        print(
            "Values are dense (no sparsity) vendor figures; prices are on-demand rental. --sources lists each value's source and date."
        )
    return 0


def _add_simulate(sub) -> None:
    p = sub.add_parser(
        "simulate",
        help="modeled decode of a trace on a device mix (homogeneous TP or Lamina), or the paper's table",
        description="Trace-driven simulation from measured profiles (results/profiles/) or the roofline. "
        "--paper prints the paper's nine equal-cost comparisons as a markdown table.",
    )
    p.add_argument("--paper", action="store_true", help="the nine comparisons (3 models x 3 traces)")
    p.add_argument("--model", help="model slug, e.g. llama3-70b (see `lamina-bench models`)")
    p.add_argument("--system", help="homogeneous | lamina")
    p.add_argument("--compute", help="compute mix NxDEVICE, e.g. 2xH100 (homogeneous: the TP group)")
    p.add_argument("--attention", help="Lamina attention mix NxDEVICE, e.g. 4xH20")
    p.add_argument("--trace", help="azure-conv | azure-code | kimi-conv")
    p.add_argument("--requests", type=int, help="first N requests of the trace (default: all)")
    p.add_argument("--arrival", help="saturate (default) | trace | poisson")
    p.add_argument("--rate", type=float, help="Poisson arrival rate, requests/s")
    p.add_argument("--seed", type=int, help="seed of the Poisson arrivals")
    p.add_argument("--pipeline-batches", type=int, help="Lamina: 1 none, 2 ping-pong (default), >2 rotate")
    p.add_argument("--max-batch", type=int, help="cap on running requests")
    p.add_argument("--dtype", help="fp16 (default) | bf16")
    p.add_argument("--devices-file", help="TOML file overriding or adding devices (prices, specs)")
    p.add_argument("--profile-dir", help="folder of <device>-<backend>.json profiles (results/profiles)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_simulate)


def _given(args, **names: str) -> dict:
    """{parameter: value} for the options the user gave (defaults live in the called function only)."""
    return {param: getattr(args, opt) for param, opt in names.items() if getattr(args, opt) is not None}


def _run_simulate(args) -> int:
    from lamina_bench.catalog.devices import load_catalog, parse_mix
    from lamina_bench.catalog.models import get_model
    from lamina_bench.catalog.workloads import load_trace
    from lamina_bench.model.iteration import iteration_model
    from lamina_bench.model.paper import paper_comparisons
    from lamina_bench.model.simulator import simulate
    from lamina_bench.model.system import SystemConfig, memory_plan
    from lamina_bench.report.text import comparisons_markdown, result_table

    catalog = load_catalog(args.devices_file)
    if args.profile_dir and not Path(args.profile_dir).is_dir():
        raise UserInputError(
            f"--profile-dir {args.profile_dir} is not a folder (it holds <device>-<backend>.json)"
        )
    if args.paper:
        if args.dtype not in (None, "fp16"):
            raise UserInputError("--paper reproduces the paper's fp16 setting; drop --dtype")
        rows = paper_comparisons(requests=args.requests, catalog=catalog, profile_dir=args.profile_dir)
        if args.json:
            print(json.dumps([{"model": c.model, "trace": c.trace, "homogeneous": c.homogeneous.to_dict(),
                               "lamina": c.lamina.to_dict()} for c in rows]))  # fmt: skip
        else:
            print(comparisons_markdown(rows))
        return 0
    missing = [o for o in ("model", "system", "compute", "trace") if getattr(args, o) is None]
    if missing:
        raise UserInputError(f"simulate needs --{', --'.join(missing)} (or --paper)")
    config = SystemConfig(
        args.system, get_model(args.model), parse_mix(args.compute, catalog),
        parse_mix(args.attention, catalog) if args.attention else None,
        **_given(args, dtype="dtype", pipeline_batches="pipeline_batches", max_batch_size="max_batch"),
    )  # fmt: skip
    memory_plan(config)  # a mix the weights do not fit: one-line error before anything else
    if (args.rate is not None or args.seed is not None) and args.arrival != "poisson":
        raise UserInputError("--rate and --seed apply to --arrival poisson only")
    model = iteration_model(config, profile_dir=args.profile_dir)
    result = simulate(config, load_trace(args.trace), model=model,
                          **_given(args, arrival="arrival", rate_per_s="rate", seed="seed", requests="requests"))  # fmt: skip
    print(result.to_json() if args.json else result_table(result))
    return 0


def _add_search(sub) -> None:
    p = sub.add_parser("search", help="best tokens per dollar (Lamina, homogeneous) under a TBT SLO, budget")
    p.add_argument("--model", required=True, help="model slug, e.g. llama3-70b")
    p.add_argument("--trace", required=True, help="azure-conv | azure-code | kimi-conv")
    p.add_argument("--tbt-slo-ms", type=float, help="p99 time between tokens, ms")
    p.add_argument("--budget-usd-per-hour", type=float, help="most the whole mix may cost per hour")
    p.add_argument("--devices", help="comma-separated catalog devices (default: all with specs and a price)")
    p.add_argument("--requests", type=int, help="replay the first N requests of the trace")
    p.add_argument("--top", type=int, default=15, help="rows of the ranked table to print")
    p.add_argument("--devices-file", help="TOML file overriding or adding devices (prices, specs)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_search)


def _run_search(args) -> int:
    from lamina_bench.catalog.devices import load_catalog
    from lamina_bench.catalog.models import get_model
    from lamina_bench.catalog.workloads import load_trace
    from lamina_bench.model.search import search, search_table

    devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else None
    result = search(get_model(args.model), load_trace(args.trace), devices=devices,
                    catalog=load_catalog(args.devices_file),
                    **_given(args, tbt_slo_ms="tbt_slo_ms", budget_usd_per_hour="budget_usd_per_hour",
                             requests="requests"))  # fmt: skip
    print(json.dumps(result.to_dict()) if args.json else search_table(result, args.top))
    return 0


def _add_compare(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="compare two runs (or two pytest-benchmark JSON files); exit 1 on a regression or missing data",
        description="Match HEAD's points to BASE's by point_id (benchmarks by name) and flag changes beyond "
        "the threshold whose 95% intervals do not overlap. Exit 0 clean, 1 regression or missing/failed "
        "points, 2 bad input. Details: lamina_bench/compare/.",
    )
    p.add_argument("base", help="run folder, baseline folder (results/baselines/DEVICE) or benchmark JSON")
    p.add_argument("head", help="run folder or benchmark JSON, the same kind as BASE")
    p.add_argument(
        "--threshold", help="percent change that counts for modeled/derived rows (default 0: exact)"
    )
    p.add_argument(
        "--measured-threshold",
        help="percent for measured rows, their model predictions and benchmarks (default 25: CPU timings "
        "are noisy), or 'report' to list their changes without failing",
    )
    p.add_argument("--fail-on", choices=("regression", "change"), help="change: any difference fails")
    p.add_argument("--format", choices=("text", "markdown", "json"), default="text")
    p.set_defaults(func=_run_compare)


def _run_compare(args) -> int:
    from lamina_bench.compare.compare import Thresholds, compare_paths, parse_threshold
    from lamina_bench.compare.format import format_report

    limits = {}
    if args.threshold is not None:
        limits["modeled_pct"] = parse_threshold(args.threshold, "--threshold")
    if args.measured_threshold is not None:
        limits["measured_pct"] = parse_threshold(
            args.measured_threshold, "--measured-threshold", allow_report=True
        )
    report = compare_paths(args.base, args.head, Thresholds(**limits),
                                   **_given(args, fail_on="fail_on"))  # fmt: skip
    print(format_report(report, args.format), end="" if args.format == "markdown" else "\n")
    return report.exit_code


def _add_baseline(sub) -> None:
    p = sub.add_parser("baseline", help="CI baselines under results/baselines/<device>/: update, show")
    actions = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    up = actions.add_parser("update", help="copy a finished run's points and manifest into the baseline")
    up.add_argument("run_dir", help="run folder (results/<run_id>)")
    up.add_argument("--device", help="baseline name (default: 'modeled' for all-modeled runs, else the GPU)")
    show = actions.add_parser("show", help="list the baselines, or the points of one")
    show.add_argument("device", nargs="?", help="one baseline's name")
    show.add_argument("--json", action="store_true")
    for q in (up, show):
        q.add_argument("--root", help="baselines folder (default results/baselines)")
    p.set_defaults(func=_run_baseline)


def _run_baseline(args) -> int:
    from dataclasses import asdict

    from lamina_bench.compare.baselines import (
        baseline_folder,
        baseline_info,
        baseline_table,
        list_baselines,
        update_baseline,
    )
    from lamina_bench.compare.sides import load_side

    root = _given(args, root="root")
    if args.action == "update":
        info = update_baseline(args.run_dir, args.device, **root)
        print(f"baseline updated: {baseline_table([info])}")
        return 0
    if args.device is None:
        infos = list_baselines(**root)
        print(json.dumps([asdict(i) for i in infos]) if args.json else baseline_table(infos))
        return 0
    folder = baseline_folder(args.device, **root)
    info = baseline_info(folder)
    entries = load_side(folder).entries.values()
    if args.json:
        print(
            json.dumps(
                {
                    **asdict(info),
                    "points": [{"point_id": e.key, "label": e.label, **e.values} for e in entries],
                }
            )
        )
        return 0
    print(baseline_table([info]))
    for e in entries:
        tput = e.values.get("throughput_tok_per_s")
        print(f"  {e.key} {e.label}: {_fmt(tput, 1, 1)} tok/s")
    return 0


def _add_run(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run a sweep (default: the embedded default sweep) and write results + report",
        description="Expand a sweep spec into points, measure or model each, store rows in results/<run_id>/, "
        "then write the report. Failed points are stored with their error; --resume skips finished points.",
    )
    p.add_argument("spec", nargs="?", help="sweep spec TOML (default: lamina_bench/data/default_sweep.toml)")
    p.add_argument(
        "--quick", action="store_true", help="the quick sweep (or one repeat of SPEC); under a minute"
    )
    p.add_argument("--out", default="results", help="results root; the run goes to OUT/<run_id>/")
    p.add_argument("--resume", action="store_true", help="continue the newest unfinished run of this spec")
    p.add_argument("--shard", help="I/N: run only shard I of N (merge shards with `lamina-bench merge`)")
    p.add_argument("--point", help="run only the point with this id (as in a row's repro_command)")
    p.add_argument("--run-id", help="name of the run folder (default: <spec name>-<UTC time>)")
    p.add_argument("--report", default=None, help="report path (default: reports/<run_id>.html)")
    p.add_argument("--no-report", action="store_true", help="skip the report")
    p.set_defaults(func=_run_run)


def _run_run(args) -> int:
    import dataclasses
    import datetime as dt

    from lamina_bench.report.text import model_error_text, summary_text
    from lamina_bench.results.store import RunStore
    from lamina_bench.sweep.resume import find_resumable, manifest_spec, parse_shard, shard
    from lamina_bench.sweep.run import run_sweep
    from lamina_bench.sweep.spec import DEFAULT_SPEC, QUICK_SPEC, load_spec

    spec_path = args.spec or str(QUICK_SPEC if args.quick else DEFAULT_SPEC)
    spec = load_spec(spec_path)  # every error here comes before any work
    if args.quick and args.spec:
        spec = dataclasses.replace(spec, repeats=1)
    points = list(spec.points)
    if args.shard:
        points = shard(points, *parse_shard(args.shard))
    if args.point:
        points = [p for p in points if p.point_id == args.point]
        if not points:
            raise UserInputError(
                f"no point {args.point!r} in {spec_path}; ids are in each row's repro_command"
            )
    out_root = Path(args.out)
    if out_root.exists() and not out_root.is_dir():
        raise UserInputError(f"--out {out_root} exists and is not a folder")
    record = manifest_spec(spec, spec_path, args.shard, args.point)
    run_dir = find_resumable(out_root, record) if args.resume else None
    if args.resume and run_dir is None:
        print(f"nothing to resume under {out_root} for this spec; starting a new run", file=sys.stderr)
    if run_dir is not None:
        store = RunStore.open(run_dir)
        print(f"resuming {run_dir}", file=sys.stderr)
    else:
        shard_tag = f"-shard{args.shard.replace('/', 'of')}" if args.shard else ""
        run_id = args.run_id or f"{spec.name}-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}{shard_tag}"
        store = RunStore.create(out_root, run_id=run_id, spec=record, argv=sys.argv)
    print(f"{len(points)} points -> {store.path}", file=sys.stderr)
    outcome = run_sweep(spec, store, points, spec_path=spec_path)
    store.finalize()
    print(f"{outcome.ran} points run, {outcome.skipped} already done, {outcome.failed} failed "
          f"in {outcome.wall_s:.0f} s -> {store.path}")  # fmt: skip
    rows = store.rows()
    print(summary_text(rows))
    errors = model_error_text(rows)
    if errors:
        print(errors)
    if not args.no_report:
        _write_report([store.path], args.report or f"reports/{store.run_id}.html")
    return 1 if outcome.failed else 0


def _write_report(run_dirs, out) -> None:
    from lamina_bench.report import build_report

    print(f"report: {build_report(run_dirs, out)}")


def _add_merge(sub) -> None:
    p = sub.add_parser("merge", help="merge the run folders of several shards into one run")
    p.add_argument("runs", nargs="+", help="run folders (e.g. results/default-...-shard1of2)")
    p.add_argument("--out", required=True, help="folder of the merged run (must not exist)")
    p.set_defaults(func=_run_merge)


def _run_merge(args) -> int:
    from lamina_bench.results.merge import merge_runs

    store = merge_runs(args.runs, args.out, argv=sys.argv)
    print(f"merged {len(args.runs)} runs, {len(store.points())} points -> {store.path}")
    return 0


def _add_gpu_check(sub) -> None:
    from lamina_bench.gpucheck import add_arguments  # stdlib only at import; torch loads when it runs

    p = sub.add_parser(
        "gpu-check",
        help="one-call check of a single H100/H200: gpu tests, copy and GEMM ceilings, decode kernel "
        "bandwidth, 70B-shaped profile, one measured point with telemetry",
        description="Run every GPU check in one process, each step time-boxed, into OUT_DIR (at most 8 "
        "files: summary.json, log.txt, the profile, run.tar.gz, ...). Without CUDA it runs on the CPU at "
        "tiny sizes. Same as `python -m lamina_bench.gpucheck`.",
    )
    add_arguments(p)
    p.set_defaults(func=_run_gpu_check)


def _run_gpu_check(args) -> int:
    from lamina_bench.gpucheck import run_from_args

    return run_from_args(args)


def _add_profile(sub) -> None:
    p = sub.add_parser(
        "profile", help="measure operator times on the local device (feeds the performance model)"
    )
    p.add_argument("--device", help="cpu (default) | cuda")
    p.add_argument(
        "--model", help="bench model (default bench-llama-gqa), HF folder, or catalog model (random weights)"
    )
    p.add_argument("--dtype", help="fp32 (default) | fp16 | bf16")
    p.add_argument(
        "--layers", type=int, help="layers built for a catalog model (default 2; times are per layer)"
    )
    p.add_argument("--out", help="folder (default results/profiles); the file is <device>-<backend>.json")
    p.add_argument("--quick", action="store_true", help="fewer points and repeats")
    p.set_defaults(func=_run_profile)


def _run_profile(args) -> int:
    from lamina_bench.measure.profile import ProfileSettings, profile_device
    from lamina_bench.model.profiles import DEFAULT_PROFILE_DIR, write_profile

    out = Path(args.out) if args.out else DEFAULT_PROFILE_DIR
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} exists and is not a folder")
    given = {
        k: getattr(args, k) for k in ("model", "device", "dtype", "layers") if getattr(args, k) is not None
    }
    if args.quick:
        given.update(batches=(1, 8), contexts=(64, 512), repeats=3, link=False, lamina=False)
    settings = ProfileSettings(**given)  # the defaults live in ProfileSettings only
    profile = profile_device(settings, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    path = write_profile(profile, out / f"{profile.name}.json")
    print(
        f"measured profile of {profile.device} ({profile.backend}, {profile.dtype}, {profile.model.name}) -> {path}"
    )
    for p in profile.dense:
        print(f"  dense layer  batch {p.batch:>4}: {p.time_s * 1e3:8.3f} ms (measured)")
    for p in profile.attention:
        print(
            f"  attention    batch {p.batch:>4} context {p.context_len:>6}: {p.time_s * 1e3:8.3f} ms (measured)"
        )
    for kind, steps in (("engine", profile.engine_steps), ("lamina", profile.lamina_steps)):
        for p in steps:
            print(
                f"  {kind} step  batch {p.batch:>4} context {p.context_len:>6}: {p.time_s * 1e3:8.3f} ms (measured)"
            )
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser(
        "report",
        help="HTML comparison report of one or more runs (self-contained, works offline)",
        description="Write one HTML file comparing Lamina with its equal-cost homogeneous baseline, from "
        "run folders (results/<run_id>/); several runs are compared side by side.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders, e.g. results/default-...")
    p.add_argument("--out", help="HTML file (default: reports/<run_id>.html, or <first>-vs-<last>.html)")
    p.add_argument("--title", help="page title (default: the run ids)")
    p.add_argument(
        "--history",
        action="store_true",
        help="plot each metric over commits instead (RUN_DIRs may be run, baseline or parent folders)",
    )
    p.set_defaults(func=_run_report)


def _run_report(args) -> int:
    from lamina_bench.report import build_report, default_report_path, plotly_js

    if args.history:
        from lamina_bench.report.history import build_history_report

        print(f"history report: {build_history_report(args.runs, args.out or 'reports/history.html')}")
        return 0

    out = build_report(args.runs, args.out or default_report_path(args.runs), title=args.title)
    size_mb = out.stat().st_size / 1e6
    note = "" if plotly_js() is not None else " (figures left out: plotly is not installed)"
    print(f"report: {out} ({size_mb:.1f} MB, {len(args.runs)} run{'s' if len(args.runs) > 1 else ''}){note}")
    return 0


_COMMANDS = [_add_generate, _add_models, _add_hardware, _add_simulate, _add_search, _add_run, _add_profile,
             _add_report, _add_compare, _add_baseline, _add_merge, _add_gpu_check]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserInputError, ConfigError) as exc:
        print(f"lamina-bench: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
