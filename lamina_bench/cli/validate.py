"""`lamina-bench validate` (the operator model against public measurements) and `lamina-bench profile
import` (a Vidur profile as a lamina-bench profile): wiring only."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import sys
from pathlib import Path

from lamina_bench.cli.common import Parser
from lamina_bench.model.ops.calibration import DEFAULT_CALIBRATION
from lamina_bench.validate.figures import DEFAULT_FIGURES, load_figures, regressions, write_figures
from lamina_bench.validate.run import DEFAULT_RUNS, SETS, run_calibration, run_validation


def add_validate(sub) -> None:
    p = sub.add_parser(
        "validate",
        help="the GPU operator model against public measurements (results/validation/): error per set, kind, GPU",
        description="Predict every row of the validation files with the calibrated operator model, print the "
        "error (median |error|, p90, worst row) per set, kind and GPU, store the rows as a results run "
        f"({DEFAULT_RUNS}/<run_id>/ unless --out or --no-store; measured and modeled rows, `predicts` "
        "linking them; `lamina-bench report` draws it) and exit 1 when a validation figure got worse than the "
        "committed ones (results/validation/errors.json).",
    )
    p.add_argument(
        "--set", dest="which", default="validation", choices=SETS, help="which split (default validation)"
    )
    p.add_argument("--json", action="store_true", help="the figures as one JSON object")
    p.add_argument("--dir", help="folder of validation files (default results/validation/)")
    p.add_argument(
        "--calibration", help=f"calibration file (default {DEFAULT_CALIBRATION.name} in that folder)"
    )
    p.add_argument("--figures", help=f"committed error figures (default {DEFAULT_FIGURES.name} there)")
    store = p.add_mutually_exclusive_group()
    store.add_argument(
        "--out",
        default=DEFAULT_RUNS,
        help="where the judged rows (dense layers, not their single ops) are stored as a results run, "
        f"OUT/<run_id>/, for `compare` and `report` (default {DEFAULT_RUNS}, not committed)",
    )
    store.add_argument("--no-store", action="store_true", help="print the figures only; store no run")
    p.add_argument("--run-id", help="run folder name (default validate-<set>-<UTC time>-<4 hex digits>)")
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="fit the constants on the calibration files (only) and write the calibration file, then stop",
    )
    p.add_argument(
        "--update-figures", action="store_true", help="write the current figures as the committed ones"
    )
    p.set_defaults(func=_run_validate)


def _run_validate(args) -> int:
    if args.calibrate:
        cal, path = run_calibration(args.dir, args.calibration or DEFAULT_CALIBRATION)
        print(
            f"calibrated {', '.join(sorted(cal.gpus))} on {len(_fit_files(cal))} calibration files -> {path}"
        )
        return 0
    which = "all" if args.update_figures else args.which
    result = run_validation(which, args.dir, args.calibration)
    figures_path = Path(args.figures or DEFAULT_FIGURES)
    if args.update_figures:
        path = write_figures(result.figures, result.sources(), figures_path)
        print(f"wrote {len(result.figures)} figures -> {path}")
        return 0
    # the gate judges the committed files; for another folder only when its figures are given
    gated = "validation" in result.splits and (args.figures is not None or args.dir is None)
    committed = load_figures(figures_path) if gated else None
    worse = regressions(result.figures, committed) if committed is not None else None
    run_path = None
    if not args.no_store:
        from lamina_bench.validate.rows import write_run  # the results store (pandas) only when writing

        run_id = (
            args.run_id
            or f"validate-{args.which}-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
        )
        stored = [j for j in result.judged if j.kind != "dense_op"]
        run_path = write_run(stored, args.out, run_id, sys.argv, result.run_spec())
    if args.json:
        print(json.dumps(_json(result, worse, run_path)))
    else:
        from lamina_bench.validate.text import summary_text

        print(summary_text(result.figures, result.judged, result.splits, result.calibration.date, result.left_out,
                           worse, str(figures_path)))  # fmt: skip
        if run_path is not None:
            print(f"rows stored as a results run: {run_path}")
    return 1 if worse else 0


def _fit_files(cal) -> set[str]:
    return {f for gpu in cal.fit.values() for fam in gpu.values() for f in fam["files"]}


def _json(result, worse, run_path) -> dict:
    def worst(j):
        return {"file": j.file, "conditions": dict(j.conditions), "measured": j.measured, "predicted": j.predicted,
                "error": j.error}  # fmt: skip

    return {
        "calibration_date": result.calibration.date,
        "sets": list(result.splits),
        "figures": {k: {**f.to_dict(), "worst": worst(f.worst)} for k, f in result.figures.items()},
        "left_out": [{"file": f, "row": i, "reason": r} for f, i, r in result.left_out],
        "regressions": worse,
        "run": str(run_path) if run_path else None,
    }


def add_profile_import(sub) -> None:
    """`profile import`, a subcommand of the `profile` command (which measures when given none)."""
    profile = sub.choices["profile"]
    actions = profile.add_subparsers(dest="profile_action", parser_class=Parser, metavar="{import}")
    p = actions.add_parser(
        "import",
        help="write a lamina-bench profile from another tool's profiling files",
        description="Read Vidur's profiling CSVs (mlp.csv, attention.csv, optional all_reduce.csv and "
        "send_recv.csv) and write a lamina-bench profile (model/profiles.py format).",
    )
    p.add_argument("source", metavar="DIR", help="the folder holding the CSV files")
    p.add_argument("--format", required=True, choices=("vidur",), help="the profiling tool's layout")
    p.add_argument("--out", required=True, help="profile file to write (.json)")
    p.add_argument("--device", required=True, help="catalog device the profile was taken on, e.g. H100")
    p.add_argument("--tp", type=int, default=1, help="TP degree of the dense points (default 1)")
    p.add_argument("--model", help="catalog model with the profiled layer shape (default: found by shape)")
    p.set_defaults(func=_run_profile_import)


def _run_profile_import(args) -> int:
    from lamina_bench.model.profiles import write_profile
    from lamina_bench.validate.vidur import import_vidur

    profile = import_vidur(args.source, args.device, args.tp, args.model)
    path = write_profile(profile, args.out)
    print(
        f"{path}: {profile.device} {profile.model.name}, {len(profile.dense)} dense, {len(profile.attention)} "
        f"attention, {len(profile.allreduce)} all-reduce, {len(profile.link)} link points"
    )
    return 0
