"""History view: runs ordered by time and labelled by commit, one line per point, one self-contained page."""

from __future__ import annotations

import json
import re
from pathlib import Path

import plotly.offline
import pytest

from lamina_bench.compare.baselines import update_baseline
from lamina_bench.errors import UserInputError
from lamina_bench.report.history import build_history_report, find_run_dirs, load_history
from lamina_bench.results.files import atomic_write_json
from lamina_bench.results.metrics import METRICS
from lamina_bench.results.row import PointRow, point_id
from lamina_bench.results.store import RunStore


def row(i: int, throughput: float | None, **overrides) -> PointRow:
    """A modeled row of point i; an override named after a registered metric sets that metric."""
    metrics = {"throughput_tok_per_s": throughput}
    metrics.update({name: overrides.pop(name) for name in [k for k in overrides if k in METRICS]})
    fields = dict(
        point_id=point_id({"i": i}),
        source="modeled",
        model="llama-33b",
        system="lamina" if i % 2 else "homogeneous",
        compute="1xH100",
        trace="azure-conv",
        metrics={k: v for k, v in metrics.items() if v is not None},
    )
    return PointRow(**{**fields, **overrides})


def make_run(
    root: Path, run_id: str, commit: str, start: str, rows: list[PointRow], dirty: bool = False
) -> Path:
    store = RunStore.create(root, run_id=run_id, spec={}, argv=["test"], devices=[])
    for r in rows:
        store.add_point(r)
    store.finalize()
    store.manifest.update(git={"commit": commit, "dirty": dirty, "error": None}, start_time=start)
    atomic_write_json(store.path / "manifest.json", store.manifest)
    return store.path


@pytest.fixture
def three_runs(tmp_path) -> Path:
    """Three runs at three commits, written out of time order; point 2 fails in the middle run."""
    root = tmp_path / "results"
    ci = {"throughput_tok_per_s": (95.0, 130.0)}
    make_run(root, "r3", "c" * 40, "2026-03-01T10:00:00Z", [row(1, 120.0, tbt_p99_ms=9.0), row(2, 60.0)])
    make_run(root, "r1", "a" * 40, "2026-01-01T10:00:00Z", [row(1, 100.0, ci=ci), row(2, 50.0)])
    failed = row(2, None, status="failed", error="Boom")
    make_run(root, "r2", "b" * 40, "2026-02-01T10:00:00Z", [row(1, 110.0), failed], dirty=True)
    return root


def test_history_orders_runs_by_time_and_keeps_ok_points(three_runs):
    runs, table = load_history([three_runs])
    assert [r.run_id for r in runs] == ["r1", "r2", "r3"]
    assert [r.label for r in runs] == [
        "aaaaaaaa 2026-01-01 10:00",
        "bbbbbbbb* 2026-02-01 10:00",
        "cccccccc 2026-03-01 10:00",
    ]
    tput = table[table["metric"] == "throughput_tok_per_s"]
    p1 = tput[tput["point_id"] == point_id({"i": 1})]
    assert p1["value"].tolist() == [100.0, 110.0, 120.0]
    assert p1["ci_low"].tolist()[0] == 95.0 and p1["ci_high"].tolist()[0] == 130.0
    p2 = tput[tput["point_id"] == point_id({"i": 2})]
    assert p2["run"].tolist() == [runs[0].label, runs[2].label]  # the failed row is a gap, not a 0
    assert table[table["metric"] == "tbt_p99_ms"]["value"].tolist() == [9.0]


def test_history_takes_aggregates_over_their_single_repeats(tmp_path):
    singles = [row(1, 90.0 + r, repeat=r, point_id=point_id({"i": 1, "repeat": r})) for r in range(3)]
    aggregate = row(1, 91.0, repeats=3, ci={"throughput_tok_per_s": (90.0, 92.0)})
    make_run(tmp_path, "reps", "d" * 40, "2026-04-01T10:00:00Z", [*singles, aggregate])
    _, table = load_history([tmp_path])
    assert table[["point_id", "value", "ci_low", "ci_high"]].values.tolist() == [
        [aggregate.point_id, 91.0, 90.0, 92.0]
    ]


def test_history_page_is_self_contained(three_runs, tmp_path):
    out = build_history_report([three_runs], tmp_path / "out" / "history.html")
    page = out.read_text()
    assert page.count(plotly.offline.get_plotlyjs()[:60]) == 1  # plotly.js embedded exactly once
    assert "<script src" not in page and "cdn.plot.ly" not in page.replace(plotly.offline.get_plotlyjs(), "")
    divs = re.findall(r'id="history-([a-z0-9_]+)"', page)
    assert divs == ["throughput_tok_per_s", "tbt_p99_ms"]  # metrics with data, in registry order
    assert "throughput_tok_per_s (higher is better)" in page and "tbt_p99_ms (lower is better)" in page
    newplot = page[page.index('Plotly.newPlot(                        "history-throughput_tok_per_s"') :]
    traces = json.loads(newplot[newplot.index("[{") : newplot.index("}],") + 2])
    lamina = next(t for t in traces if "lamina" in t["name"])
    assert lamina["y"] == [100.0, 110.0, 120.0] and lamina["error_y"]["array"][0] == pytest.approx(30.0)
    assert lamina["error_y"]["arrayminus"][0] == pytest.approx(5.0)
    assert "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" in page  # full commit in the runs table


def test_find_run_dirs_expands_folders_and_skips_staging(three_runs, tmp_path):
    baselines = three_runs / "baselines"
    update_baseline(three_runs / "r1", "cpu", baselines)
    (baselines / ".cpu.new-1234").mkdir()
    (baselines / ".cpu.new-1234" / "manifest.json").write_text("{}")
    found = find_run_dirs([three_runs])
    assert [p.name for p in found] == ["cpu", "r1", "r2", "r3"]
    runs, _ = load_history([three_runs])
    assert [r.run_id for r in runs] == ["r1", "r2", "r3"]  # the baseline copy of r1 counts once
    assert find_run_dirs([three_runs / "r2"]) == [three_runs / "r2"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="holds no run folder"):
        find_run_dirs([tmp_path / "empty"])
    with pytest.raises(UserInputError, match="is not a folder"):
        find_run_dirs([tmp_path / "missing"])
