"""The metric registry: every entry complete, names checked everywhere, and a metric added to it alone is
stored, compared, reported and shown in the history without another change."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lamina_bench.cli import main
from lamina_bench.compare.compare import compare_paths, direction
from lamina_bench.compare.format import format_report
from lamina_bench.compare.sides import BENCH_METRIC
from lamina_bench.report import render_report
from lamina_bench.report.data import load_runs
from lamina_bench.report.history import load_history
from lamina_bench.results.files import atomic_write_json
from lamina_bench.results.metrics import (
    DOWN,
    METRICS,
    NEUTRAL,
    POOL_PARTS,
    SOURCES,
    UP,
    Metric,
    ci_metrics,
    metric,
    metric_names,
    register,
)
from lamina_bench.results.row import PointRow, point_id
from lamina_bench.results.store import RunStore


def test_every_registered_metric_is_complete():
    assert len(METRICS) >= 23
    for name, m in METRICS.items():
        assert m.name == name and name.isidentifier() and name == name.lower()
        assert m.better in (UP, DOWN, NEUTRAL), name
        assert isinstance(m.unit, str) and m.unit.strip(), name
        assert m.meaning.strip() and "\n" not in m.meaning, name
        assert m.label.strip(), name
        assert isinstance(m.has_ci, bool)
        assert metric(name) is m and direction(name) == m.better  # compare judges in the registry's direction
    assert metric_names() == tuple(METRICS)
    assert (
        ci_metrics() == tuple(n for n, m in METRICS.items() if m.has_ci)
        and "throughput_tok_per_s" in ci_metrics()
    )
    assert SOURCES == ("measured", "modeled", "derived")
    assert set(POOL_PARTS) >= {"dense_ms", "attention_ms", "network_ms", "idle_ms"}


def test_directions_of_the_headline_metrics():
    assert METRICS["throughput_tok_per_s"].better == UP and METRICS["tokens_per_usd"].better == UP
    assert METRICS["tbt_p99_ms"].better == DOWN and METRICS["usd_per_mtok"].better == DOWN
    assert METRICS["generated_tokens"].better == NEUTRAL  # set by the workload: a change is only "changed"
    assert direction(BENCH_METRIC) == DOWN and direction("not_a_metric") == NEUTRAL
    assert (
        METRICS["mem_busy_pct_mean"].unit == "%" and "not a bandwidth" in METRICS["mem_busy_pct_mean"].meaning
    )


def test_unknown_names_are_errors_naming_them():
    with pytest.raises(ValueError, match="unknown metric 'throughput'; registered: throughput_tok_per_s, "):
        metric("throughput")
    pid = point_id({"t": 1})
    with pytest.raises(ValueError, match=f"point {pid}: unknown metric 'tput_tok_per_s' in metrics"):
        PointRow(point_id=pid, source="modeled", metrics={"throughput_tok_per_s": 1.0, "tput_tok_per_s": 2.0})
    row = PointRow(point_id=pid, source="modeled", metrics={"throughput_tok_per_s": 1.0})
    with pytest.raises(ValueError, match="unknown metric 'typo'"):
        row.value("typo")
    assert row.value("tbt_p50_ms") is None  # registered but absent: unknown, not an error


def test_metric_definitions_are_checked():
    with pytest.raises(ValueError, match="lower-case identifier"):
        Metric("Tput", "tok/s", UP, False, "m", "l")
    with pytest.raises(ValueError, match="lower-case identifier"):
        Metric("tput per s", "tok/s", UP, False, "m", "l")
    with pytest.raises(ValueError, match="better must be one of up, down, none"):
        Metric("tput", "tok/s", "higher", False, "m", "l")
    with pytest.raises(ValueError, match="'tbt_p50_ms' is already registered"):
        register(Metric("tbt_p50_ms", "s", UP, False, "a second definition", "TBT"))
    assert METRICS["tbt_p50_ms"].better == DOWN  # the first definition stays


# ---- adding a metric: one registry entry is enough -----------------------------------------------------

HIT = Metric(
    "kv_hit_pct", "%", UP, True, "share of decode steps whose KV cache was resident (TEST)", "KV hit (%)"
)
WAIT = Metric(
    "queue_wait_ms", "ms", DOWN, False, "mean time a request waited for admission (TEST)", "wait (ms)"
)


@pytest.fixture
def new_metrics():
    """HIT and WAIT registered for one test, and removed again afterwards."""
    added = [register(m) for m in (HIT, WAIT)]
    try:
        yield added
    finally:
        for m in added:
            METRICS.pop(m.name, None)
    with pytest.raises(ValueError, match="unknown metric 'kv_hit_pct'"):
        PointRow(point_id=point_id({"t": 1}), source="modeled", metrics={"kv_hit_pct": 1.0})


def rows(hit: float, wait: float) -> list[PointRow]:
    """Two modeled points carrying the new metrics; the first one's change by the arguments (TEST DATA)."""
    out = []
    for i, system in enumerate(("lamina", "homogeneous")):
        config = {
            "model": "llama-33b",
            "system": system,
            "compute": "1xH100" if i == 0 else "2xH100",
            "attention": "2xH20" if i == 0 else None,
            "trace": "azure-conv",
            "pipeline_batches": 2 - i,
            "dtype": "fp16",
        }
        h, w = (hit, wait) if i == 0 else (50.0, 3.0)
        out.append(
            PointRow(
                point_id=point_id({"mode": "modeled", **config}),
                source="modeled",
                profile="roofline",
                **config,
                metrics={
                    "throughput_tok_per_s": 1000.0 + i,
                    "cost_usd_per_hour": 20.0,
                    "kv_hit_pct": h,
                    "queue_wait_ms": w,
                },
                ci={"kv_hit_pct": (h - 1.0, h + 1.0)},
                whole_trace={"kv_hit_pct": h / 2},
            )
        )
    return out


def store(root: Path, run_id: str, points: list[PointRow], start: str) -> Path:
    run = RunStore.create(root, run_id=run_id, spec={}, argv=["test"], devices=[])
    for row in points:
        run.add_point(row)
    run.finalize()
    run.manifest.update(git={"commit": run_id * 8, "dirty": False, "error": None}, start_time=start)
    atomic_write_json(run.path / "manifest.json", run.manifest)
    return run.path


def test_a_registered_metric_is_stored_compared_reported_and_in_the_history(new_metrics, tmp_path, capsys):
    root = tmp_path / "results"
    base = store(root, "base", rows(hit=80.0, wait=2.0), "2026-01-01T10:00:00Z")

    # stored and read back: value, interval and whole-trace value intact, a column of the flat view
    back = {r.point_id: r for r in RunStore.open(base).rows()}
    first = back[rows(80.0, 2.0)[0].point_id]
    assert first.value("kv_hit_pct") == 80.0 and first.interval("kv_hit_pct") == (79.0, 81.0)
    assert first.value("queue_wait_ms") == 2.0 and first.whole_trace == {"kv_hit_pct": 40.0}
    record = json.loads((base / "points" / f"{first.point_id}.json").read_text())
    assert record["metrics"]["kv_hit_pct"] == 80.0 and record["ci"]["kv_hit_pct"] == [79.0, 81.0]
    frame = RunStore.open(base).points().set_index("point_id")
    columns = ["kv_hit_pct", "kv_hit_pct_ci_low", "kv_hit_pct_ci_high"]
    assert frame.loc[first.point_id, columns].tolist() == [80.0, 79.0, 81.0]
    assert frame.loc[first.point_id, "queue_wait_ms"] == 2.0 and "queue_wait_ms_ci_low" not in frame.columns
    assert frame.loc[first.point_id, "whole_trace.kv_hit_pct"] == 40.0

    # compared in its own direction: down for an "up" metric, up for a "down" one, are regressions
    worse = store(root, "worse", rows(hit=60.0, wait=2.0), "2026-02-01T10:00:00Z")
    report = compare_paths(base, worse)
    assert report.exit_code == 1
    assert [f.reason for f in report.failures()] == ["kv_hit_pct regression"]
    text = format_report(report)
    assert "REGRESSION" in text and "kv_hit_pct: 80 [79, 81] -> 60 [59, 61] (-25.00%)" in text
    slower = store(root, "slower", rows(hit=80.0, wait=2.5), "2026-03-01T10:00:00Z")
    assert [f.reason for f in compare_paths(base, slower).failures()] == ["queue_wait_ms regression"]
    assert main(["compare", str(base), str(slower)]) == 1
    assert "REGRESSION" in capsys.readouterr().out
    better = store(root, "better", rows(hit=95.0, wait=1.0), "2026-04-01T10:00:00Z")
    report = compare_paths(base, better)
    verdicts = {d.metric: d.verdict for p in report.points for d in p.deltas if p.key == first.point_id}
    assert verdicts == {
        "throughput_tok_per_s": "ok",
        "cost_usd_per_hour": "ok",
        "kv_hit_pct": "improvement",
        "queue_wait_ms": "improvement",
    }
    assert report.exit_code == 0 and compare_paths(base, better, fail_on="change").exit_code == 1
    data = json.loads(format_report(report, "json"))
    (delta,) = [
        m for p in data["points"] for m in p["metrics"] if m["metric"] == "kv_hit_pct" and m["head"] == 95.0
    ]
    assert delta["direction"] == UP and delta["base_interval"] == [79.0, 81.0]

    # reported: the appendix's "all metrics" table names it with its unit, and shows the values
    page = render_report(load_runs([base, worse]), js=None)
    tables = re.findall(r"<summary>all metrics</summary>(.*?)</table>", page, re.S)
    assert len(tables) == 2  # one per run, each with the new columns and their values
    assert all("<th>kv_hit_pct [%]</th><th>queue_wait_ms [ms]</th>" in t for t in tables)
    assert "<td class=num>80.00</td><td class=num>2.000</td>" in tables[0]
    assert "<td class=num>60.00</td><td class=num>2.000</td>" in tables[1]
    assert "<th>throughput_tok_per_s [tok/s]</th>" in tables[0]

    # in the history: one line per point over the four runs, with its CI
    runs, history = load_history([root])
    assert [r.run_id for r in runs] == ["base", "worse", "slower", "better"]
    hits = history[(history["metric"] == "kv_hit_pct") & (history["point_id"] == first.point_id)]
    assert hits["value"].tolist() == [80.0, 60.0, 80.0, 95.0]
    assert hits["ci_low"].tolist() == [79.0, 59.0, 79.0, 94.0]
    waits = history[history["metric"] == "queue_wait_ms"]
    assert len(waits) == 8 and set(waits["ci_low"].isna()) == {True}
