"""compare on pytest-benchmark JSON files, and CI baselines (update, show, compare against one)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lamina_bench.compare.baselines import list_baselines, update_baseline
from lamina_bench.compare.compare import (
    compare_paths,
)
from lamina_bench.results.store import RunStore
from tests.lamina_bench.compare_helpers import REPO, cli, make_row, make_store, stored_rows

# ---- pytest-benchmark JSON -----------------------------------------------------------------------


def bench_file(path: Path, stats: dict[str, tuple[float, float, float]], node: str = "ci-runner") -> Path:
    """A minimal pytest-benchmark JSON: name -> (q1, median, q3) in seconds."""
    benchmarks = [
        {"name": n.split("::")[-1], "fullname": n, "stats": {"q1": q1, "median": med, "q3": q3, "mean": med}}
        for n, (q1, med, q3) in stats.items()
    ]
    data = {
        "machine_info": {"node": node, "cpu": {"brand_raw": "Test CPU"}},
        "commit_info": {"id": "abc123"},
        "benchmarks": benchmarks,
        "datetime": "2026-01-01T00:00:00",
        "version": "5.3.1",
    }
    path.write_text(json.dumps(data))
    return path


def test_pytest_benchmark_json_comparison(tmp_path, capsys):
    a, b, c, d = (f"tests/bench/test_bench_x.py::test_{k}" for k in "abcd")
    base = bench_file(
        tmp_path / "base.json",
        {a: (0.95, 1.0, 1.05), b: (1.9, 2.0, 2.1), c: (0.4, 0.5, 0.6), d: (1.0, 1.0, 1.0)},
    )
    head = bench_file(
        tmp_path / "head.json",
        {a: (1.45, 1.5, 1.55), b: (2.15, 2.2, 2.25), c: (0.55, 0.7, 0.8), d: (1.0, 1.0, 1.0)},
    )
    report = compare_paths(base, head)
    verdicts = {p.key: p.deltas[0].verdict for p in report.points}
    # a: +50% > 25%, IQRs disjoint; b: +10% < 25%; c: +40% but the IQRs [0.4, 0.6], [0.55, 0.8] overlap
    assert verdicts == {a: "regression", b: "ok", c: "noise", d: "ok"}
    assert report.points[0].deltas[0].change_pct == pytest.approx(50.0)
    code, out, _ = cli(capsys, "compare", str(base), str(head))
    assert code == 1 and f"REGRESSION {a}" in out
    assert cli(capsys, "compare", str(base), str(head), "--measured-threshold", "60")[0] == 0
    # a benchmark that disappeared is missing data; another machine gets a note
    gone = bench_file(tmp_path / "gone.json", {a: (0.95, 1.0, 1.05)}, node="laptop")
    report = compare_paths(base, gone)
    assert report.exit_code == 1 and {p.state for p in report.points} == {"compared", "missing"}
    assert "may not be comparable" in report.notes[0]


@pytest.mark.slow
def test_real_benchmark_json_feeds_compare(tmp_path):
    """The microbenchmarks' own --benchmark-json output, compared with itself: clean."""
    import subprocess
    import sys

    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        str(REPO / "tests/bench/test_bench_simulator.py"),
        "--benchmark-only",
        f"--benchmark-json={out}",
        "-p",
        "no:cacheprovider",
    ]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, timeout=300)
    report = compare_paths(out, out)
    assert report.exit_code == 0 and report.counts()["compared"] >= 1


# ---- baselines -----------------------------------------------------------------------------------


def test_baseline_update_show_and_compare(sweep_runs, tmp_path, capsys):
    base, head = sweep_runs
    root = tmp_path / "baselines"
    code, out, _ = cli(capsys, "baseline", "update", str(base), "--root", str(root))
    assert code == 0 and "modeled: 2 ok, 0 failed points (2 modeled)" in out
    folder = root / "modeled"  # an all-modeled run defaults to the device-independent name
    assert sorted(p.name for p in (folder / "points").iterdir()) == sorted(
        r.point_id + ".json" for r in stored_rows(base)
    )
    assert RunStore.open(folder).rows() == RunStore.open(base).rows()  # the rows, whole
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["run_id"] == "a" and manifest["baseline"]["source_run_id"] == "a"
    assert manifest["git"] == json.loads((base / "manifest.json").read_text())["git"]
    assert cli(capsys, "compare", str(folder), str(head), "--fail-on", "change")[0] == 0
    code, out, _ = cli(capsys, "baseline", "show", "--root", str(root))
    assert code == 0 and out.startswith("modeled: 2 ok")
    code, out, _ = cli(capsys, "baseline", "show", "modeled", "--root", str(root), "--json")
    shown = json.loads(out)
    assert shown["device"] == "modeled" and len(shown["points"]) == 2
    code, _, err = cli(capsys, "baseline", "show", "h100", "--root", str(root))
    assert code == 2 and "no baseline 'h100'" in err and "baselines there: modeled" in err


def test_baseline_update_replaces_the_old_one(tmp_path):
    root = tmp_path / "baselines"
    old = make_store(tmp_path, "old", [make_row(1), make_row(2)])
    new = make_store(tmp_path, "new", [make_row(3)])
    update_baseline(old, "cpu", root)
    info = update_baseline(new, "cpu", root)
    assert info.run_id == "new" and info.points_ok == 1
    assert [p.name for p in (root / "cpu" / "points").iterdir()] == [make_row(3).point_id + ".json"]
    assert sorted(p.name for p in root.iterdir()) == ["cpu"]  # no staging or old folders left


def test_baseline_refuses_failed_points_and_bad_names(tmp_path, capsys):
    bad = make_store(tmp_path, "bad", [make_row(1), make_row(2, status="failed", error="Boom")])
    code, _, err = cli(capsys, "baseline", "update", str(bad), "--root", str(tmp_path / "b"))
    assert code == 2 and "1 failed points" in err
    good = make_store(tmp_path, "good", [make_row(1)])
    code, _, err = cli(
        capsys, "baseline", "update", str(good), "--device", "../x", "--root", str(tmp_path / "b")
    )
    assert code == 2 and "must be letters, digits" in err
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())


def test_default_device_of_a_measured_run(tmp_path):
    gpu = [{"name": "CPU"}, {"name": "H100 SXM"}]
    run = make_store(tmp_path, "gpu", [make_row(1, "measured")], devices=gpu)
    assert update_baseline(run, root=tmp_path / "b").device == "h100-sxm"
    cpu = make_store(tmp_path, "cpu", [make_row(1, "measured")], devices=[{"name": "CPU"}])
    assert update_baseline(cpu, root=tmp_path / "b").device == "cpu"
    assert sorted(b.device for b in list_baselines(tmp_path / "b")) == ["cpu", "h100-sxm"]


def test_compare_against_a_copied_run_folder(sweep_runs, tmp_path):
    """A run folder copied elsewhere (as CI artifacts are) compares like the original."""
    base, head = sweep_runs
    copy = tmp_path / "copy"
    shutil.copytree(head, copy)
    assert compare_paths(base, copy, fail_on="change").exit_code == 0
