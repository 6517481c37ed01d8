"""Regression comparison: clean on identical sweeps, exit 1 on an injected drop or missing data, noise-aware
verdicts, output shapes, pytest-benchmark JSON, baselines."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from lamina_bench.cli import build_parser
from lamina_bench.compare.compare import (
    DEFAULT_MEASURED_THRESHOLD_PCT,
    DEFAULT_THRESHOLD_PCT,
    REL_TOL,
    Thresholds,
    compare_paths,
    metric_verdict,
)
from lamina_bench.compare.sides import load_side, point_label
from lamina_bench.results.row import point_id
from lamina_bench.results.store import RunStore
from lamina_bench.sweep.spec import parse_spec
from tests.lamina_bench.compare_helpers import (
    REPO,
    cli,
    make_row,
    make_store,
    stored_rows,
    with_metrics,
)

# ---- deterministic sweeps ------------------------------------------------------------------------


def test_two_runs_of_the_same_sweep_compare_clean(sweep_runs, capsys):
    base, head = sweep_runs
    code, out, _ = cli(capsys, "compare", str(base), str(head), "--fail-on", "change")
    assert code == 0, out
    assert "PASS: 2 points compared, 0 regressions" in out
    report = compare_paths(base, head, fail_on="change")
    verdicts = {d.verdict for p in report.points for d in p.deltas}
    assert verdicts == {"ok"} and len(report.points) == 2
    assert all(p.source == "modeled" and len(p.deltas) >= 10 for p in report.points)


def test_injected_ten_percent_throughput_drop_exits_1_and_names_the_point(sweep_runs, tmp_path, capsys):
    base, _ = sweep_runs
    rows = stored_rows(base)
    victim = rows[1]
    rows[1] = with_metrics(victim, throughput_tok_per_s=victim.value("throughput_tok_per_s") * 0.9)
    head = make_store(tmp_path, "slow", rows)
    code, out, _ = cli(capsys, "compare", str(base), str(head))
    assert code == 1
    lines = [line for line in out.splitlines() if line.startswith("REGRESSION")]
    assert len(lines) == 1  # only the injected metric on the injected point
    assert victim.point_id in lines[0] and "throughput_tok_per_s" in lines[0] and "(-10.00%)" in lines[0]
    assert point_label(victim) in lines[0]  # the label names the configuration
    assert victim.system in point_label(victim) and victim.compute in point_label(victim)
    # a 10% drop is within a 15% threshold, and beyond a 9.99% one
    assert cli(capsys, "compare", str(base), str(head), "--threshold", "15")[0] == 0
    assert cli(capsys, "compare", str(base), str(head), "--threshold", "9.99")[0] == 1


def test_missing_point_exits_1(sweep_runs, tmp_path, capsys):
    base, _ = sweep_runs
    rows = stored_rows(base)
    head = make_store(tmp_path, "partial", rows[:1])
    code, out, _ = cli(capsys, "compare", str(base), str(head))
    assert code == 1
    assert f"MISSING point {rows[1].point_id}" in out
    assert "1 missing" in out


def test_repo_ci_spec_is_the_papers_nine_comparisons():
    spec = parse_spec(tomllib.loads((REPO / "results/baselines/modeled.toml").read_text()))
    assert len(spec.points) == 18 and {p.kind for p in spec.points} == {"modeled"}
    assert {p.config.requests for p in spec.points} == {2000}
    # the committed baseline (version-1 or -2 point files) reads as typed rows of exactly that spec
    rows = RunStore.open(REPO / "results/baselines/modeled").rows()
    assert sorted(r.point_id for r in rows) == sorted(p.point_id for p in spec.points)
    assert all(r.ok and r.source == "modeled" and r.value("throughput_tok_per_s") > 0 for r in rows)


# ---- verdicts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("direction", "base", "head", "threshold", "expected"),
    [
        ("up", 100.0, 90.0, 5.0, "regression"),
        ("up", 100.0, 110.0, 5.0, "improvement"),
        ("down", 50.0, 55.0, 5.0, "regression"),  # TBT up 10%
        ("down", 50.0, 45.0, 5.0, "improvement"),
        ("up", 100.0, 95.0, 5.0, "ok"),  # exactly at the threshold
        ("up", 100.0, 94.99, 5.0, "regression"),
        ("none", 100.0, 120.0, 5.0, "changed"),
        ("up", 100.0, 100.0 * (1 + REL_TOL / 10), 0.0, "ok"),  # float noise is never a change
        ("up", 100.0, 100.0 * (1 - 1e-6), 0.0, "regression"),  # exact mode catches tiny changes
        ("up", 0.0, 1e-12, 50.0, "improvement"),  # from 0, any change counts
    ],
)
def test_metric_verdict(direction, base, head, threshold, expected):
    assert metric_verdict(direction, base, head, threshold) == expected


def test_overlapping_intervals_are_noise_and_disjoint_ones_count():
    # throughput -20%, far beyond 5%: noise while the CIs overlap (95 >= 90), regression when they don't
    assert metric_verdict("up", 100.0, 80.0, 5.0, (90.0, 110.0), (75.0, 95.0)) == "noise"
    assert metric_verdict("up", 100.0, 80.0, 5.0, (90.0, 110.0), (75.0, 89.0)) == "regression"
    # one side without an interval is the point [80, 80]: inside base's CI -> noise
    assert metric_verdict("up", 100.0, 80.0, 5.0, (70.0, 110.0), None) == "noise"
    assert metric_verdict("up", 100.0, 80.0, 5.0, (85.0, 110.0), None) == "regression"


def test_noisy_measured_metric_with_overlapping_intervals_is_not_flagged(tmp_path, capsys):
    def run(name: str, throughput: float, ci: tuple[float, float]) -> Path:
        row = make_row(
            1, "measured", throughput_tok_per_s=throughput, repeats=5, ci={"throughput_tok_per_s": ci}
        )
        return make_store(tmp_path, name, [row])

    base, head = run("base", 100.0, (90.0, 110.0)), run("noisy", 80.0, (75.0, 95.0))
    code, out, _ = cli(capsys, "compare", str(base), str(head), "--measured-threshold", "5")
    assert code == 0, out
    assert "NOISE" in out and "1 within noise" in out and "(-20.00%)" in out
    head2 = run("slow", 80.0, (75.0, 85.0))
    assert cli(capsys, "compare", str(base), str(head2), "--measured-threshold", "5")[0] == 1


def test_per_source_thresholds_and_report_only(tmp_path, capsys):
    base = make_store(tmp_path, "base", [make_row(1, "modeled"), make_row(2, "measured")])
    # measured point 20% slower, modeled point 1% slower
    head = make_store(
        tmp_path,
        "head",
        [
            make_row(1, "modeled", throughput_tok_per_s=1001.0 * 0.99),
            make_row(2, "measured", throughput_tok_per_s=1002.0 * 0.8),
        ],
    )
    report = compare_paths(
        base, head, Thresholds(modeled_pct=2.0, measured_pct=DEFAULT_MEASURED_THRESHOLD_PCT)
    )
    assert report.exit_code == 0  # 1% < 2% modeled; 20% < 25% measured
    assert compare_paths(base, head, Thresholds(modeled_pct=0.5)).exit_code == 1  # 1% > 0.5%
    failures = compare_paths(base, head, Thresholds(modeled_pct=2.0, measured_pct=10.0)).failures()
    assert [(f.point.source, f.metric.metric) for f in failures] == [("measured", "throughput_tok_per_s")]
    code, out, _ = cli(
        capsys, "compare", str(base), str(head), "--threshold", "2", "--measured-threshold", "report"
    )
    assert code == 0 and "REGRESSION (REPORT ONLY)" in out and "profile) report only" in out


def test_predictions_from_the_runs_own_profile_use_the_measured_threshold(tmp_path):
    """A modeled row predicting a measured point is calibrated from a profile timed in that run."""
    extra = {"predicts": "0123456789abcdef"}
    base = make_store(tmp_path, "base", [make_row(1, **extra), make_row(2)])
    head = make_store(
        tmp_path,
        "head",
        [
            make_row(1, **extra, throughput_tok_per_s=1001.0 * 0.9),
            make_row(2, throughput_tok_per_s=1002.0 * 0.9),
        ],
    )
    report = compare_paths(base, head)  # defaults: modeled exact, measured 25%
    thresholds = {p.key: p.threshold_pct for p in report.points}  # order-free: rows may share a timestamp
    assert thresholds == {make_row(1).point_id: DEFAULT_MEASURED_THRESHOLD_PCT, make_row(2).point_id: 0.0}
    assert [f.point.key for f in report.failures()] == [make_row(2).point_id]


def test_failed_new_and_missing_metric(tmp_path, capsys):
    base = make_store(tmp_path, "base", [make_row(1), make_row(2), make_row(3)])
    failed = make_row(2, status="failed", error="RuntimeError: boom", throughput_tok_per_s=None)
    no_tbt = make_row(3, tbt_p99_ms=None)
    head = make_store(tmp_path, "head", [make_row(1), failed, no_tbt, make_row(4)])
    report = compare_paths(base, head)
    states = {p.key: p.state for p in report.points}
    assert states == {
        make_row(i).point_id: s for i, s in ((1, "compared"), (2, "failed"), (3, "compared"), (4, "new"))
    }
    reasons = sorted(f.reason for f in report.failures())
    assert reasons == ["failed: head failed: RuntimeError: boom", "tbt_p99_ms has no value in head"]
    assert report.exit_code == 1
    # a new point alone passes, unless HEAD must match BASE exactly
    head_new = make_store(tmp_path, "new", [make_row(1), make_row(2), make_row(3), make_row(4)])
    assert compare_paths(base, head_new).exit_code == 0
    assert compare_paths(base, head_new, fail_on="change").exit_code == 1
    code, out, _ = cli(capsys, "compare", str(base), str(head_new))
    assert code == 0 and f"NEW point {make_row(4).point_id}" in out


def test_fail_on_change_catches_improvements(tmp_path):
    base = make_store(tmp_path, "base", [make_row(1)])
    head = make_store(tmp_path, "head", [make_row(1, throughput_tok_per_s=2000.0)])
    assert compare_paths(base, head).exit_code == 0  # an improvement is not a regression
    assert compare_paths(base, head, fail_on="change").exit_code == 1


def test_empty_base_is_an_error(tmp_path):
    base = make_store(tmp_path, "empty", [])
    head = make_store(tmp_path, "head", [make_row(1)])
    report = compare_paths(base, head)
    assert report.exit_code == 1 and "nothing was compared" in report.errors[0]


def test_single_repeats_are_left_out_when_aggregates_exist(tmp_path):
    agg = make_row(1, "measured", repeats=3)
    singles = [make_row(1, "measured", repeat=r, point_id=point_id({"i": 1, "repeat": r})) for r in range(3)]
    run = make_store(tmp_path, "reps", [agg, *singles])
    side = load_side(run)
    assert list(side.entries) == [agg.point_id] and "3 single repeats left out" in side.notes[0]


# ---- output shapes -------------------------------------------------------------------------------


@pytest.fixture
def regressed(tmp_path) -> tuple[Path, Path]:
    base = make_store(tmp_path, "base", [make_row(1), make_row(2)])
    head = make_store(tmp_path, "head", [make_row(1, throughput_tok_per_s=1001.0 * 0.9), make_row(2)])
    return base, head


def test_markdown_output_fits_a_pr_comment(regressed, capsys):
    code, out, _ = cli(capsys, "compare", *map(str, regressed), "--format", "markdown")
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith("### ❌ lamina-bench compare: FAIL")
    header = lines.index("| point | metric | base | head | change | verdict | threshold |")
    assert lines[header + 1] == "|---|---|---:|---:|---:|---|---|"
    rows = [line for line in lines[header + 2 :] if line.startswith("|")]
    assert len(rows) == 1 and rows[0].count("|") == 8
    assert make_row(1).point_id in rows[0]
    assert "| 1001 | 900.9 | -10.00% | **regression** | 0% modeled |" in rows[0]


def test_json_output_shape(regressed, capsys):
    code, out, _ = cli(capsys, "compare", *map(str, regressed), "--format", "json")
    data = json.loads(out)
    assert code == data["exit_code"] == 1
    assert set(data) >= {"base", "head", "thresholds", "fail_on", "counts", "failures", "points", "errors"}
    limits = {"modeled_pct": 0.0, "measured_pct": DEFAULT_MEASURED_THRESHOLD_PCT, "rel_tol": REL_TOL}
    assert data["thresholds"] == limits
    point = next(p for p in data["points"] if p["key"] == make_row(1).point_id)
    assert data["failures"] == [
        {
            "key": make_row(1).point_id,
            "label": point["label"],
            "metric": "throughput_tok_per_s",
            "reason": "throughput_tok_per_s regression",
        }
    ]
    assert data["counts"]["compared"] == 2 and data["counts"]["metrics_regression"] == 1
    metric = next(m for m in point["metrics"] if m["metric"] == "throughput_tok_per_s")
    assert metric["base"] == 1001.0 and metric["change_pct"] == pytest.approx(-10.0)


def test_help_states_the_default_thresholds():
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["compare"]
    helps = {a.dest: a.help for a in sub._actions}
    assert f"default {DEFAULT_THRESHOLD_PCT:g}" in helps["threshold"]
    assert f"default {DEFAULT_MEASURED_THRESHOLD_PCT:g}" in helps["measured_threshold"]


# ---- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        ["--threshold", "-1"],
        ["--threshold", "abc"],
        ["--threshold", "report"],
        ["--measured-threshold", "nan"],
    ],
)
def test_bad_threshold_exits_2(regressed, capsys, extra):
    code, _, err = cli(capsys, "compare", *map(str, regressed), *extra)
    assert code == 2 and err.count("\n") == 1 and "must be a percentage >= 0" in err


def test_not_a_run_exits_2(tmp_path, regressed, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = cli(capsys, "compare", str(tmp_path / "empty"), str(regressed[1]))
    assert code == 2 and "is not a run folder" in err
    code, _, err = cli(capsys, "compare", str(tmp_path / "nope"), str(regressed[1]))
    assert code == 2 and "does not exist" in err
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"benchmarks": []}))
    code, _, err = cli(capsys, "compare", str(regressed[0]), str(bench))
    assert code == 2 and "cannot compare a run" in err
    bench.write_text('{"machine_info": {}}')
    code, _, err = cli(capsys, "compare", str(bench), str(bench))
    assert code == 2 and "no 'benchmarks' list" in err


def test_point_labels_name_each_pool():
    lamina = make_row(1, pipeline_batches=2, attention="2xH20")
    afd = make_row(2, system="afd", compute="8xH100", attention="4xH20", pipeline_batches=3)
    assert point_label(lamina) == "llama-33b lamina 1xH100+2xH20 azure-conv B=1 n=2 (modeled)"
    assert point_label(afd) == "llama-33b afd 4xH20 attn + 8xH100 experts azure-conv B=2 m=3 (modeled)"


def test_point_labels_show_optional_knobs_when_set():
    """Points that differ only in prefill workers or a batch cap get different labels."""
    plain = make_row(1, pipeline_batches=2, attention="2xH20")
    pw = make_row(1, pipeline_batches=2, attention="2xH20", settings={"prefill_workers": 2})
    capped = make_row(1, settings={"max_batch": 32})
    assert point_label(pw) == point_label(plain).replace(" (modeled)", " pw=2 (modeled)")
    assert point_label(capped).endswith(" cap=32 (modeled)")
