"""Commands that run models on this machine: generate, run (a sweep), profile, gpu-check.

They import torch (seconds) when they run, so the other commands start at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shlex
import signal
import sys
import threading
from functools import partial

from lamina_bench.cli.common import given
from lamina_bench.errors import UserInputError
from lamina_bench.gpucheck import add_arguments, run_from_args  # light: its steps load torch when they run
from lamina_bench.report import build_report, default_report_path
from lamina_bench.report.catalog_text import fmt, profile_text
from lamina_bench.report.text import model_error_text, summary_text
from lamina_bench.results.paths import check_output_file, check_output_folder

# ---- generate ------------------------------------------------------------------------------------


def add_generate(sub, full: bool) -> None:
    p = sub.add_parser(
        "generate",
        help="serve a prompt file with the reference implementation (measured on this machine)",
        description="Serve prompts with the reference implementation. Input: JSONL lines "
        '{"prompt_ids": [...], "max_new_tokens": N}. Greedy unless --temperature is given.',
    )
    if full:
        from reference_impl.options import add_generate_arguments

        add_generate_arguments(p)
        p.add_argument("--json", action="store_true", help="JSONL: one line per request, then a summary line")
    p.set_defaults(func=_run_generate)


def _run_generate(args) -> int:
    from reference_impl.afd import AFDConfig, generate_afd
    from reference_impl.config import GenerateConfig
    from reference_impl.engine import run_summary
    from reference_impl.homogeneous import generate
    from reference_impl.lamina import LaminaConfig, generate_lamina
    from reference_impl.latency import latency_metrics, request_latencies
    from reference_impl.options import SYSTEMS, config_from_args
    from reference_impl.prompts import read_prompts

    if args.system not in SYSTEMS:
        raise UserInputError(f"unknown system {args.system!r}; valid: {', '.join(SYSTEMS)}")
    if args.system != "lamina" and args.launcher != "processes":
        raise UserInputError(f"--launcher {args.launcher} applies to --system lamina only")
    if args.launcher != "ray" and (args.ray_address or args.ray_devices):
        raise UserInputError("--ray-address and --ray-devices apply to --launcher ray only")
    if args.system != "lamina" and args.prefill_workers:
        raise UserInputError(
            f"--prefill-workers {args.prefill_workers} needs --system lamina (the homogeneous engine prefills "
            "on its own devices); leave it out or use --system lamina"
        )
    requests = None
    if args.system == "afd":
        config = config_from_args(AFDConfig, args)
        requests = _read_prompt_file(args.prompts, read_prompts)
        afd_run = generate_afd(config, requests)
        run, summary = afd_run.engine, afd_run.summary()
    elif args.system == "lamina":
        config = config_from_args(LaminaConfig, args)
        if config.launcher == "ray":
            from reference_impl.lamina.ray_launch import RayPlacement, generate_lamina_ray

            placement = RayPlacement.from_options(args.ray_address, args.ray_devices)
            generate_lamina = partial(generate_lamina_ray, placement=placement)
        requests = _read_prompt_file(args.prompts, read_prompts)
        lamina_run = generate_lamina(config, requests)
        run, summary = lamina_run.engine, lamina_run.summary()
    else:
        config = config_from_args(GenerateConfig, args)
        if config.tp > 1:  # the model must split over --tp processes: checked before any is started
            from reference_impl.checkpoint import read_config
            from reference_impl.model import check_tp

            check_tp(read_config(config.model_dir), config.tp)
        requests = _read_prompt_file(args.prompts, read_prompts)
        run = generate(config, requests)
        summary = run_summary(run)
    if args.json:  # per request: its tokens, then its measured latencies (reference_impl/latency.py)
        latencies = request_latencies(run, requests)
        for c, latency in zip(run.completions, latencies, strict=True):
            line = {"prompt_ids": list(c.prompt_ids), "output_ids": list(c.output_ids), **latency.to_json()}
            print(json.dumps(line))
        print(json.dumps({"summary": {**summary, **latency_metrics(latencies)}}))
        return 0
    for c in run.completions:
        print(
            f"request {c.request_id}: {len(c.prompt_ids)} prompt -> {len(c.output_ids)} new "
            f"({c.finish_reason}): {list(c.output_ids)}"
        )
    print(
        f"{summary['requests']} requests, {summary['generated_tokens']} tokens in {summary['wall_s']:.2f} s; "
        f"decode {summary['decode_tok_per_s']:.1f} tok/s (measured), mean decode batch "
        f"{fmt(summary['mean_decode_batch'], digits=2)}; scheduler {summary['scheduler']}: "
        f"{summary['preemptions']} preemptions, {summary['recomputed_tokens']} tokens recomputed"
    )
    return 0


def _read_prompt_file(path: str, read_prompts):
    """The requests of a prompt file (reference_impl.prompts.read_prompts); a file that is not UTF-8 text
    is a one-line error."""
    try:
        return read_prompts(path)
    except UnicodeDecodeError as exc:
        raise UserInputError(
            f"prompt file {path} is not UTF-8 text (JSONL expected): byte {exc.start} cannot be decoded"
        ) from None


# ---- sweeps and their results -----------------------------------------------------------------------


def add_run(sub) -> None:
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
    p.add_argument("--executor", default="local", help="local (default: this process) | ray (a Ray cluster)")
    p.add_argument("--address", help="--executor ray: HOST:PORT of the Ray head (default: a private cluster)")
    p.add_argument(
        "--ray-devices", help="--executor ray: custom resources per role, e.g. compute=H100,attention=H20"
    )
    p.set_defaults(func=_run_run)


@contextlib.contextmanager
def interrupt_on_sigterm():
    """SIGTERM (a scheduler stopping the job) ends the sweep like Ctrl-C: KeyboardInterrupt in the main
    thread, so the run stays resumable and the exit is one line. The previous handler comes back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def resume_command(spec_path: str, args, run_id: str) -> str:
    """The command that continues this very run: the same spec, shard and point, and its run id."""
    parts = ["lamina-bench", "run", spec_path, "--out", str(args.out), "--resume", "--run-id", run_id]
    options = (("--shard", args.shard), ("--point", args.point), ("--address", args.address))
    options += (("--ray-devices", args.ray_devices),)
    if args.executor != "local":
        parts += ["--executor", args.executor]
    for option, value in options:
        if value is not None:
            parts += [option, value]
    if args.quick:
        parts.append("--quick")
    return shlex.join(parts)


def _run_run(args) -> int:
    """`run`: every error before the first point is one line; Ctrl-C or SIGTERM at any moment ends with one
    line and exit 130, leaving a run that `--resume` continues (each stored point is whole)."""
    state: dict = {}
    try:
        with interrupt_on_sigterm():
            return _sweep(args, state)
    except KeyboardInterrupt:
        store = state.get("store")
        if store is None:
            print("lamina-bench: interrupted before the sweep started; no point was run", file=sys.stderr)
            return 130
        with contextlib.suppress(OSError, UserInputError):  # the run stays resumable without the mark
            store.mark_interrupted()
        print(
            f"lamina-bench: interrupted: {len(store.finished_point_ids())} points are stored in {store.path} "
            f"(each whole); continue with: {resume_command(state['spec_path'], args, store.path.name)}",
            file=sys.stderr,
        )
        return 130
    finally:
        if state.get("store") is not None:
            state["store"].unlock()


def _sweep(args, state: dict) -> int:
    from lamina_bench.sweep.executor import executor_named
    from lamina_bench.sweep.resume import manifest_spec, open_run, select_points
    from lamina_bench.sweep.run import run_sweep
    from lamina_bench.sweep.spec import DEFAULT_SPEC, QUICK_SPEC, load_spec

    spec_path = args.spec if args.spec is not None else str(QUICK_SPEC if args.quick else DEFAULT_SPEC)
    state["spec_path"] = spec_path
    spec = load_spec(spec_path)  # every error here comes before any work
    if args.quick and args.spec:
        spec = dataclasses.replace(spec, repeats=1)
    points = select_points(spec, spec_path, args.shard, args.point)
    record = manifest_spec(spec, spec_path, args.shard, args.point)
    executor = executor_named(args.executor, args.address, args.ray_devices)
    report = None
    if not args.no_report:
        report = args.report  # checked now, not after the sweep; the default needs the run id
        check_output_file(report if report is not None else default_report_path(["x"]), "--report")
    out = check_output_folder(args.out, "--out")
    log = lambda message: print(message, file=sys.stderr)  # noqa: E731
    store = state["store"] = open_run(spec, record, out, args.resume, args.run_id, sys.argv, log)
    log(f"{len(points)} points -> {store.path}")
    outcome = run_sweep(spec, store, points, spec_path=spec_path, executor=executor)
    store.finalize()
    print(
        f"{outcome.ran} points run, {outcome.skipped} already done, {outcome.failed} failed "
        f"in {outcome.wall_s:.0f} s -> {store.path}"
    )
    rows = store.rows()
    print(summary_text(rows))
    errors = model_error_text(rows)
    if errors:
        print(errors)
    if not args.no_report:
        default = default_report_path(
            [store.path]
        )  # the folder's name: a resumed manifest's run_id is no path
        print(f"report: {build_report([store.path], report if report is not None else default)}")
    return 1 if outcome.failed else 0


# ---- measuring this machine: profile, gpu-check ---------------------------------------------------------


def add_profile(sub) -> None:
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

    out = check_output_folder(args.out if args.out is not None else DEFAULT_PROFILE_DIR, "--out")
    options = given(args, model="model", device="device", dtype="dtype", layers="layers")
    if args.quick:
        options.update(batches=(1, 8), contexts=(64, 512), repeats=3, link=False, lamina=False)
    settings = ProfileSettings(**options)  # the defaults live in ProfileSettings only
    profile = profile_device(settings, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(profile_text(profile, write_profile(profile, out / f"{profile.name}.json")))
    return 0


def add_gpu_check(sub) -> None:
    p = sub.add_parser(
        "gpu-check",
        help="every GPU measurement in one call: gpu tests, copy and GEMM ceilings, decode kernel, "
        "70B-shaped profile, one measured point with telemetry",
        description="Run every GPU check in one process, each step time-boxed, into OUT_DIR (summary.json, "
        "log.txt, the profile, run.tar.gz, ...). Without CUDA it runs on the CPU at tiny sizes. Same as "
        "`python -m lamina_bench.gpucheck`.",
    )
    add_arguments(p)
    p.set_defaults(func=_run_gpu_check)


def _run_gpu_check(args) -> int:
    return run_from_args(args)
