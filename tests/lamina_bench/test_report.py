"""The HTML report without a browser: data preparation against hand-worked numbers, and the page itself.

Fixtures are synthetic TEST DATA written through RunStore (test_report_fixtures.py).
"""

from __future__ import annotations

import json
import random
import re

import pandas as pd
import pytest

from lamina_bench.cli import main
from lamina_bench.errors import UserInputError
from lamina_bench.report import build_report, default_report_path, render_report
from lamina_bench.report.data import (
    UNSPLIT_POOL,
    downsample,
    headline_pairs,
    link_gbps,
    load_runs,
    nic_line_rate,
    pareto_front,
    plot_rows,
    pool_times,
    predictions,
    run_changes,
    telemetry_reason,
)
from lamina_bench.report.figures import Missing, bandwidth_figure, breakdown_figure
from lamina_bench.report.page import fmt_num
from lamina_bench.results.metrics import METRICS
from lamina_bench.results.row import PointRow
from tests.lamina_bench.test_report_fixtures import (
    bench_like_run,
    gpu_like_run,
    paper_rows,
    sweep_rows_50,
    write_run,
)

SECTION_IDS = ("runs", "headline", "batch", "pareto", "time", "predictions", "telemetry", "appendix")


def row(**kw) -> PointRow:
    """A report row (as data.load_run makes them: run_id is the run's label) with defaults; an argument
    named after a registered metric sets that metric (None: unknown). TEST DATA."""
    metrics = {name: kw.pop(name) for name in [k for k in kw if k in METRICS]}
    base = {
        "run_id": "r1",
        "source": "modeled",
        "model": "llama-33b",
        "trace": "azure-conv",
        "dtype": "fp16",
        "point_id": f"{random.getrandbits(64):016x}",
    }
    return PointRow(**{**base, **kw}, metrics={k: v for k, v in metrics.items() if v is not None})


# ---- 1. headline pairs -----------------------------------------------------------------------------


def test_headline_pairs_lamina_with_the_closest_cost_baseline():
    # 1xH100 + 2xH20 = $20.32/h (paper); candidates $11.06, $22.12, $44.24 -> |diff| 9.26, 1.80, 23.92
    lamina = row(
        system="lamina",
        compute="1xH100",
        attention="2xH20",
        pipeline_batches=2,
        cost_usd_per_hour=20.32,
        throughput_tok_per_s=1200.0,
        tbt_p99_ms=50.0,
    )
    homs = [
        row(
            system="homogeneous",
            compute=f"{n}xH100",
            cost_usd_per_hour=11.06 * n,
            throughput_tok_per_s=500.0 * n,
            tbt_p99_ms=40.0,
        )
        for n in (1, 2, 4)
    ]
    other_trace = row(system="homogeneous", compute="9xH100", trace="kimi-conv", cost_usd_per_hour=20.32)
    other_run = row(system="homogeneous", compute="8xH100", run_id="r2", cost_usd_per_hour=20.32)
    measured = row(system="homogeneous", compute="7xH100", source="measured", cost_usd_per_hour=20.32)
    pairs, alone = headline_pairs([lamina, *homs, other_trace, other_run, measured])
    assert alone == [] and len(pairs) == 1
    assert pairs[0].baseline.compute == "2xH100" and pairs[0].lamina is lamina
    assert pairs[0].ratio("throughput_tok_per_s") == pytest.approx(1200 / 1000)
    assert pairs[0].ratio("tbt_p99_ms") == pytest.approx(50 / 40)
    assert pairs[0].ratio("tokens_per_usd") is None  # missing on both: no ratio, never 0


def test_headline_pairs_ties_go_to_the_cheaper_and_unknown_costs_still_pair():
    lamina = row(system="lamina", compute="1xH100", attention="2xH20", cost_usd_per_hour=20.0)
    cheap, dear = (
        row(system="homogeneous", compute=c, cost_usd_per_hour=p) for c, p in (("a", 18.0), ("b", 22.0))
    )
    assert headline_pairs([lamina, dear, cheap])[0][0].baseline.compute == "a"
    cpu_l = row(
        system="lamina", compute="1xcpu", attention="1xcpu", trace=None, batch_size=4, source="measured"
    )
    cpu_h = row(system="homogeneous", compute="1xcpu", trace=None, batch_size=4, source="measured")
    cpu_other_batch = row(system="homogeneous", compute="1xcpu", trace=None, batch_size=8, source="measured")
    pairs, alone = headline_pairs([cpu_l, cpu_other_batch, cpu_h])
    assert [p.baseline is cpu_h or p.baseline == cpu_h for p in pairs] == [True] and alone == []
    failed_base = cpu_h.replace(status="failed", error="boom")
    assert headline_pairs([cpu_l, failed_base])[1] == [cpu_l]


# ---- 3. Pareto frontier -----------------------------------------------------------------------------


def test_pareto_front_hand_example():
    points = [(10, 5), (20, 8), (15, 4), (30, 8), (5, 1), (25, 9)]
    # by TBT: (5,1) best so far 1 -> front; (10,5) -> front; (15,4) beaten by (10,5); (20,8) -> front;
    # (25,9) -> front; (30,8) beaten by (25,9)
    assert pareto_front(points) == [4, 0, 1, 5]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 2.0), (1.0, 2.0)]) == [0]  # exact duplicates: the first


def test_pareto_front_matches_brute_force_on_random_points():
    rng = random.Random(7)
    for _ in range(200):
        pts = [(rng.random(), rng.random()) for _ in range(rng.randint(1, 25))]
        dominated = {
            i
            for i, (x, y) in enumerate(pts)
            for j, (u, v) in enumerate(pts)
            if j != i and u <= x and v >= y and (u < x or v > y)
        }
        assert set(pareto_front(pts)) == set(range(len(pts))) - dominated


# ---- 4. pools and the link --------------------------------------------------------------------------


def test_pool_times_from_pools_else_flat_metrics():
    pools = {
        "compute": {"dense_ms": 30.0, "network_ms": 2.0, "idle_ms": 3.0},
        "attention": {"attention_ms": 12.0, "network_ms": 2.0, "idle_ms": 21.0},
    }
    got = pool_times(row(system="lamina", pools=pools, dense_ms=99.0))
    assert got["compute"] == {"dense_ms": 30.0, "attention_ms": None, "network_ms": 2.0, "idle_ms": 3.0}
    assert got["attention"]["attention_ms"] == 12.0
    flat = {"dense_ms": 10.0, "attention_ms": 4.0, "network_ms": None, "idle_ms": 1.0}
    assert pool_times(row(system="homogeneous", **flat)) == {"compute": flat}
    assert pool_times(row(system="lamina", **flat)) == {UNSPLIT_POOL: flat}
    assert pool_times(row(system="lamina")) == {}


def test_nic_line_rate_is_the_smaller_pool_total():
    # catalog: H100 and H20 have 400 Gb/s NICs (paper table)
    assert nic_line_rate(row(compute="1xH100", attention="2xH20")).gbps == 400.0  # min(1x400, 2x400)
    assert nic_line_rate(row(compute="2xH100", attention="4xH20")).gbps == 800.0
    cpu = nic_line_rate(row(compute="1xcpu", attention="1xcpu"))
    assert cpu.gbps is None and "local CPU" in cpu.reason
    assert "not in the catalog" in nic_line_rate(row(compute="1xcuda", attention="1xcuda")).reason


def test_link_rate_peak_else_mean_from_bytes_per_token():
    # llama-33b fp16, no GQA (G = 1): (2 + 2/G) * e * d * L = 4 * 2 * 6656 * 60 = 3,194,880 bytes per token
    mean, kind = link_gbps(row(net_bytes_per_token=3_194_880.0, throughput_tok_per_s=1000.0))
    assert kind == "mean" and mean == pytest.approx(3_194_880 * 1000 * 8 / 1e9)  # 25.559 Gb/s
    assert link_gbps(row(net_peak_gbps=54.9, net_bytes_per_token=1.0, throughput_tok_per_s=1.0)) == (
        54.9,
        "peak",
    )
    assert link_gbps(row()) == (None, "none")


def test_link_and_breakdown_figures_from_rows():
    rows = [r.replace(run_id="r1") for r in paper_rows(("llama-33b",))]
    fig = bandwidth_figure(rows, "llama-33b", ["r1"])
    line = next(t for t in fig.spec["data"] if t["name"].startswith("NIC line rate"))
    assert line["name"] == "NIC line rate 400 Gb/s: 1xH100+2xH20" and line["y"] == [400.0, 400.0]
    needed = next(t for t in fig.spec["data"] if "(peak)" in t["name"])
    assert needed["y"] == [rows[0].value("net_peak_gbps")]  # only the Lamina row needs the link
    bars = breakdown_figure(rows, "llama-33b", ["r1"]).spec["data"]
    # one bar per pool: Lamina's compute and attention pools, one pool per homogeneous row
    assert len(bars[0]["y"]) == 2 + 3
    dense = dict(zip(bars[0]["y"], bars[0]["x"], strict=True))
    pools = rows[0].pools
    assert (
        dense[next(y for y in dense if y.endswith("| compute") and "lamina" in y)]
        == pools["compute"]["dense_ms"]
    )
    cpu = rows[0].replace(
        compute="1xcpu", attention="1xcpu", metrics={**rows[0].metrics, "net_peak_gbps": 2.0}
    )
    assert "no NIC line rate for the local CPU" in " ".join(bandwidth_figure([cpu], "m", ["r1"]).notes)
    assert isinstance(bandwidth_figure(rows[1:], "llama-33b", ["r1"]), Missing)  # baselines only


# ---- 5. predictions, repeats, runs, telemetry -----------------------------------------------------


def test_predictions_pair_by_point_id_then_by_configuration():
    cfg = {"system": "homogeneous", "compute": "1xcpu", "trace": None, "batch_size": 4, "context_len": 128}
    measured = row(source="measured", point_id="a" * 16, throughput_tok_per_s=100.0, tbt_mean_ms=20.0, **cfg)
    by_id = row(
        profile="cpu-cpu",
        predicts="a" * 16,
        throughput_tok_per_s=110.0,
        tbt_mean_ms=19.0,
        **{**cfg, "batch_size": 999},
    )
    by_config = row(predicts="measured", throughput_tok_per_s=50.0, **cfg)
    unrelated = row(throughput_tok_per_s=1.0, **cfg)  # no "predicts": a model point, not a prediction
    other_run = row(run_id="r2", predicts="a" * 16, throughput_tok_per_s=1.0, **{**cfg, "batch_size": 5})
    preds = predictions([measured, by_id, by_config, unrelated, other_run])
    assert [p.modeled for p in preds] == [by_id, by_config]
    assert preds[0].error_pct("throughput_tok_per_s") == pytest.approx(10.0)
    assert preds[0].error_pct("tbt_mean_ms") == pytest.approx(-5.0)
    assert preds[0].metrics() == ["throughput_tok_per_s", "tbt_mean_ms"]
    assert preds[1].error_pct("throughput_tok_per_s") == pytest.approx(-50.0)


def test_plot_rows_keep_aggregates_over_their_repeats_and_drop_failed():
    cfg = {"system": "homogeneous", "compute": "1xcpu", "batch_size": 4, "source": "measured"}
    repeats = [row(repeat=i, throughput_tok_per_s=10.0 + i, **cfg) for i in range(3)]
    aggregate = row(repeats=3, throughput_tok_per_s=11.0, **cfg)
    lone = row(repeat=0, **{**cfg, "batch_size": 8})
    failed = row(status="failed", error="boom", **{**cfg, "batch_size": 16})
    assert plot_rows([*repeats, aggregate, lone, failed]) == [aggregate, lone]


def test_run_changes_match_points_by_id():
    base = row(point_id="b" * 16, throughput_tok_per_s=100.0)
    head = row(run_id="r2", point_id="b" * 16, throughput_tok_per_s=125.0)

    class Run:  # the two attributes run_changes reads
        def __init__(self, rows):
            self.rows = rows

    changes = run_changes([Run([base]), Run([head, row(run_id="r2")])])
    assert len(changes) == 1 and changes[0].change_pct("throughput_tok_per_s") == pytest.approx(25.0)


def test_downsample_keeps_first_and_last_and_the_limit():
    frame = pd.DataFrame({"t": range(11)})
    assert downsample(frame, 4)["t"].tolist() == [0, 3, 6, 10]
    assert downsample(frame.head(10), 4)["t"].tolist() == [0, 3, 6, 9]
    assert len(downsample(frame, 100)) == 11


def test_fmt_num_significant_digits_and_missing():
    assert fmt_num(1234567.8) == "1,234,568" and fmt_num(0.012345) == "0.01235" and fmt_num(20.32) == "20.32"
    assert fmt_num(None) == fmt_num(float("nan")) == "n/a" and fmt_num(0) == "0"


# ---- the page ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {
        "bench": bench_like_run(root),
        "after": bench_like_run(root, "bench-like-after", scale=1.1),
        "gpu": gpu_like_run(root),
        "sweep": write_run(root, "sweep50", sweep_rows_50()),
    }


def _figure_specs(page: str) -> dict:
    match = re.search(r'<script type="application/json" id="report-figures">(.*?)</script>', page, re.S)
    return json.loads(match.group(1))


def _without_plotly_js(page: str) -> str:
    start = page.index("<script>/**\n* plotly.js")
    return page[:start] + page[page.index("</script>", start) :]


def test_bench_report_has_every_part_offline_and_labelled(runs_root, tmp_path):
    page = build_report([runs_root["bench"]], tmp_path / "r.html").read_text()
    for sid in SECTION_IDS:
        assert f'<section id="{sid}">' in page
    assert page.count("* plotly.js v") == 1  # embedded once
    ours = _without_plotly_js(page)
    for forbidden in ("http://", "https://", " src=", "<link", "@import", "MathJax"):
        assert forbidden not in ours, forbidden
    specs = _figure_specs(page)
    assert len(specs) == page.count('<div class="plot"') >= 8
    figures = re.findall(r"<figure>.*?</figure>", page, re.S)
    assert len(figures) == len(specs) and all('class="src ' in f for f in figures)  # every figure: a source
    assert all("source: " in spec["layout"]["title"]["text"] for spec in specs.values())
    # parts without data say why: a CPU machine has no NVML, the measured rows have no link traffic
    assert "Telemetry timelines, run bench-like</b>: not drawn, no telemetry samples: no NVML" in page
    assert (
        "bench-llama-gqa · fixed batches, prompt 128 tokens (fp32 on cpu): link bandwidth needed against batch size (Lamina)</b>: not drawn"
        in page
    )
    assert "RuntimeError: gloo connection reset (test data)" in page  # the failed point is listed
    assert "lamina-bench run default_sweep.toml --point" in page  # repro commands in the appendix
    # and every registered metric a row has, with its unit, in one table
    (metrics,) = re.findall(r"<summary>all metrics</summary>(.*?)</table>", page, re.S)
    headers = re.findall(r"<th>(\w+) \[([^\]]+)\]</th>", metrics)
    assert headers[:3] == [
        ("throughput_tok_per_s", "tok/s"),
        ("generated_tokens", "tokens"),
        ("tbt_p50_ms", "ms"),
    ]
    assert all(METRICS[name].unit == unit for name, unit in headers) and len(headers) >= 15
    assert metrics.count("<tr>") == 1 + len(load_runs([runs_root["bench"]])[0].rows)


def test_every_figure_spec_is_valid_plotly(runs_root, tmp_path):
    go = pytest.importorskip("plotly.graph_objects")
    page = build_report(list(runs_root.values()), tmp_path / "all.html").read_text()
    specs = _figure_specs(page)
    assert len(specs) >= 15
    for fig_id, spec in specs.items():
        try:
            go.Figure(spec)  # raises on an unknown property or a bad value
        except ValueError as exc:
            pytest.fail(f"{fig_id} ({spec['layout']['title']['text']}): {str(exc)[:300]}")


def test_two_runs_side_by_side(runs_root, tmp_path):
    page = build_report([runs_root["bench"], runs_root["after"]], tmp_path / "two.html").read_text()
    assert "Changes against the first run (bench-like)" in page
    assert "(+10.0%)" in page  # the second run's modeled throughput is 1.1x the first's
    names = [t.get("name", "") for s in _figure_specs(page).values() for t in s["data"]]
    assert any(n.startswith("bench-like · ") for n in names) and any(
        n.startswith("bench-like-after · ") for n in names
    )
    assert "<th>run</th><th>workload</th>" in page  # headline tables get a run column


def test_telemetry_timelines_and_verdicts(runs_root, tmp_path):
    page = build_report([runs_root["gpu"]], tmp_path / "gpu.html").read_text()
    telemetry = [
        s for s in _figure_specs(page).values() if s["layout"]["title"]["text"].startswith("Telemetry")
    ]
    assert len(telemetry) == 1
    spec = telemetry[0]
    assert {t["name"] for t in spec["data"]} >= {"GPU 0", "GPU 1"}
    windows = [s["fillcolor"] for s in spec["layout"]["shapes"]]
    assert windows == ["#2ca02c", "#d62728"]  # the valid point's window, then the invalid one's
    assert "invalid: sample gap 450.0 ms &gt; 2 x interval 100.0 ms" in page
    assert telemetry_reason(load_runs([runs_root["gpu"]])[0]) is None


def test_sweep_of_50_points_stays_small(runs_root, tmp_path):
    out = build_report([runs_root["sweep"]], tmp_path / "sweep.html")
    assert out.stat().st_size < 10e6
    pairs, alone = headline_pairs(load_runs([runs_root["sweep"]])[0].rows)
    assert len(pairs) == 24 + 4 and alone == []  # 24 modeled Lamina rows, 2 measured + 2 predicted


def test_without_plotly_the_tables_stay_and_the_page_says_why(runs_root):
    page = render_report(load_runs([runs_root["bench"]]), js=None)
    assert '<div class="plot"' not in page and "figures left out" in page.lower()
    assert "1xH100+2xH20 n=2" in page  # the headline table is still there


def test_bad_folders_are_one_line_errors(tmp_path):
    with pytest.raises(UserInputError, match="not a run folder"):
        build_report([tmp_path], tmp_path / "x.html")
    with pytest.raises(UserInputError, match="at least one run folder"):
        build_report([], tmp_path / "x.html")


def test_cli_report(runs_root, tmp_path, capsys):
    out = tmp_path / "cli.html"
    assert main(["report", str(runs_root["bench"]), str(runs_root["after"]), "--out", str(out)]) == 0
    assert out.is_file() and f"report: {out}" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a folder" in err


def test_default_report_path():
    assert str(default_report_path(["results/run-a"])) == "reports/run-a.html"
    assert str(default_report_path(["results/a", "results/b/"])) == "reports/a-vs-b.html"
