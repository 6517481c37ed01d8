"""Commands on stored runs: report, compare, baseline, merge."""

from __future__ import annotations

import dataclasses
import json
import sys

from lamina_bench.cli.common import Parser, given
from lamina_bench.compare.baselines import (
    baseline_folder,
    baseline_info,
    baseline_table,
    list_baselines,
    update_baseline,
)
from lamina_bench.compare.compare import FAIL_ON, FORMATS, Thresholds, compare_paths, parse_threshold
from lamina_bench.compare.format import format_report
from lamina_bench.compare.sides import load_side
from lamina_bench.report import build_report, default_report_path, plotly_js
from lamina_bench.report.catalog_text import fmt
from lamina_bench.report.history import build_history_report
from lamina_bench.results.merge import merge_runs
from lamina_bench.results.paths import check_output_file


def add_report(sub) -> None:
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
    if args.out is not None:
        check_output_file(args.out, "--out")  # "" too: never silently the default
    if args.history:
        out = args.out if args.out is not None else "reports/history.html"
        print(f"history report: {build_history_report(args.runs, out)}")
        return 0
    out = args.out if args.out is not None else default_report_path(args.runs)
    out = build_report(args.runs, out, title=args.title)
    note = "" if plotly_js() is not None else " (figures left out: plotly is not installed)"
    runs = f"{len(args.runs)} run{'s' if len(args.runs) > 1 else ''}"
    print(f"report: {out} ({out.stat().st_size / 1e6:.1f} MB, {runs}){note}")
    return 0


def add_compare(sub) -> None:
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
    p.add_argument("--fail-on", choices=FAIL_ON, help="change: any difference fails")
    p.add_argument("--format", choices=FORMATS, default="text")
    p.set_defaults(func=_run_compare)


def _run_compare(args) -> int:
    limits = {}
    if args.threshold is not None:
        limits["modeled_pct"] = parse_threshold(args.threshold, "--threshold")
    if args.measured_threshold is not None:
        limits["measured_pct"] = parse_threshold(
            args.measured_threshold, "--measured-threshold", allow_report=True
        )
    report = compare_paths(args.base, args.head, Thresholds(**limits), **given(args, fail_on="fail_on"))
    print(format_report(report, args.format), end="" if args.format == "markdown" else "\n")
    return report.exit_code


def add_baseline(sub) -> None:
    p = sub.add_parser("baseline", help="CI baselines under results/baselines/<device>/: update, show")
    actions = p.add_subparsers(dest="action", required=True, parser_class=Parser)
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
    root = given(args, root="root")
    if args.action == "update":
        print(f"baseline updated: {baseline_table([update_baseline(args.run_dir, args.device, **root)])}")
        return 0
    if args.device is None:
        infos = list_baselines(**root)
        print(json.dumps([dataclasses.asdict(i) for i in infos]) if args.json else baseline_table(infos))
        return 0
    folder = baseline_folder(args.device, **root)
    info, entries = baseline_info(folder), load_side(folder).entries.values()
    if args.json:
        points = [{"point_id": e.key, "label": e.label, **e.values} for e in entries]
        print(json.dumps({**dataclasses.asdict(info), "points": points}))
        return 0
    print(baseline_table([info]))
    for e in entries:
        print(f"  {e.key} {e.label}: {fmt(e.values.get('throughput_tok_per_s'), 1, 1)} tok/s")
    return 0


def add_merge(sub) -> None:
    p = sub.add_parser("merge", help="merge the run folders of several shards into one run")
    p.add_argument("runs", nargs="+", help="run folders (e.g. results/default-...-shard1of2)")
    p.add_argument("--out", required=True, help="folder of the merged run (must not exist)")
    p.set_defaults(func=_run_merge)


def _run_merge(args) -> int:
    store = merge_runs(args.runs, args.out, argv=sys.argv)
    print(f"merged {len(args.runs)} runs, {len(store.rows())} points -> {store.path}")
    return 0
