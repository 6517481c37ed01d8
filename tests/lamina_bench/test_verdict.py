"""The verdict: best Lamina against best homogeneous per workload and TBT target, worked by hand."""

from __future__ import annotations

import json
import re

import pytest

from lamina_bench.model.verdict import Workload, best, break_even, frontier, verdicts, why, workload_of
from lamina_bench.report import render_report
from lamina_bench.report.data import group_label, load_runs
from lamina_bench.results.row import PointRow, point_id
from tests.lamina_bench.test_report_fixtures import write_run


def row(
    system: str, compute: str, attention: str | None, tput: float, cost: float, p99: float, **kw
) -> PointRow:
    """A modeled trace row: tokens per USD from throughput and cost; pools make Lamina compute-bound."""
    trace, model, prices = (
        kw.pop("trace", "azure-conv"),
        kw.pop("model", "llama3-70b"),
        kw.pop("prices", "paper-2025"),
    )
    cap, requests, batch = kw.pop("cap", 0), kw.pop("requests", 1000), kw.pop("batch", 100.0)
    settings = {"arrival": "saturate", "prices": prices, **({"max_batch": cap} if cap else {})}
    pools = {"compute": {"dense_ms": 9.0, "idle_ms": 1.0}, "attention": {"attention_ms": 4.0, "idle_ms": 6.0}}
    identity = {"model": model, "trace": trace, "system": system, "compute": compute, "attention": attention,
                "requests": requests, **settings}  # fmt: skip
    return PointRow(
        point_id=point_id(identity), source="modeled", model=model, system=system, compute=compute,
        attention=attention, trace=trace, requests=requests, pipeline_batches=2 if attention else 1, settings=settings,
        metrics={"throughput_tok_per_s": tput, "cost_usd_per_hour": cost, "tokens_per_usd": tput * 3600 / cost,
                 "tbt_p50_ms": p99 * 0.8, "tbt_p99_ms": p99, "mean_batch_size": batch, "net_peak_gbps": 200.0},
        pools=pools if attention else {}, **kw,
    )  # fmt: skip


# paper prices: H100 11.06, H20 4.63 USD/h
H = row("homogeneous", "4xH100", None, 8000.0, 44.24, 40.0, batch=300.0)  # 651,041 tok/USD
H_SLOW = row("homogeneous", "8xH100", None, 20000.0, 88.48, 90.0, batch=800.0)  # 813,743 tok/USD
L = row("lamina", "2xH100", "4xH20", 9000.0, 40.64, 60.0, batch=750.0)  # 797,244 tok/USD
L_FAST = row("lamina", "2xH100", "2xH20", 4000.0, 31.38, 30.0, batch=200.0, cap=64)  # 458,891 tok/USD


def test_best_meets_the_target_and_ranks_by_tokens_per_usd():
    rows = [H, H_SLOW, L, L_FAST]
    assert best(rows, "homogeneous", 50.0) is H and best(rows, "homogeneous", 100.0) is H_SLOW
    assert best(rows, "lamina", 50.0) is L_FAST and best(rows, "lamina", None) is L
    assert best(rows, "lamina", 20.0) is None


def test_verdict_ratio_why_and_break_even_by_hand():
    (v50, v100) = verdicts([H, H_SLOW, L, L_FAST], [50.0, 100.0])
    assert v50.lamina is L_FAST and v50.homogeneous is H
    assert v50.ratio == pytest.approx((4000 / 31.38) / (8000 / 44.24))
    assert v50.answer() == f"Lamina does not pay: {v50.ratio:.2f}x tokens per USD"
    assert v100.lamina is L and v100.homogeneous is H_SLOW and v100.ratio == pytest.approx(0.9797, abs=1e-4)
    # break-even: 9000 tok/s at the baseline's 813,743 tok/USD costs 39.816 USD/h; minus 2 x 11.06 for the
    # H100s leaves 17.696 for 4 H20s: 4.424 USD/h each (the set's price is 4.63, so Lamina just misses)
    device, price = break_even(L, H_SLOW)
    assert device == "H20" and price == pytest.approx((9000 * 3600 / (20000 * 3600 / 88.48) - 22.12) / 4)
    assert price == pytest.approx(4.424, abs=1e-3)
    assert why(L, H_SLOW) == (
        "mean batch 750 vs 800 (0.9x) with the KV on 4xH20; the compute pool bounds the iteration "
        "(busy 90% compute, 40% attention)"
    )
    assert v100.link_gbps == 200.0
    assert v100.sensitivity == (("2xH100+4xH20", pytest.approx(9000 * 3600 / 40.64)),
                                ("2xH100+2xH20", pytest.approx(4000 * 3600 / 31.38)))  # fmt: skip


def test_a_free_memory_device_that_does_not_pay_gives_a_negative_break_even():
    cheap_h = row("homogeneous", "4xH100", None, 40000.0, 44.24, 40.0)
    device, price = break_even(L, cheap_h)
    assert device == "H20" and price < 0


def test_workloads_and_price_sets_are_never_compared():
    other_trace = row("lamina", "2xH100", "4xH20", 90000.0, 40.64, 60.0, trace="kimi-conv")
    other_prices = row(
        "lamina", "2xH100", "4xL40S", 90000.0, 31.21, 60.0, prices="coreweave-ondemand-2026-09-20"
    )
    other_subset = row("lamina", "2xH100", "4xH20", 90000.0, 40.64, 60.0, requests=0)
    found = verdicts([H, L, other_trace, other_prices, other_subset], [100.0])
    by_workload = {v.workload: v for v in found}
    assert len(found) == 4
    assert by_workload[workload_of(H)].lamina is L
    assert by_workload[workload_of(other_trace)].homogeneous is None
    assert workload_of(other_subset) == Workload("llama3-70b", "azure-conv", 0, "saturate", "paper-2025")
    assert "all requests" in workload_of(other_subset).label() and "first 1,000" in workload_of(L).label()


def test_frontier_by_hand():
    a = row("lamina", "1xH100", "2xH20", 1000.0, 20.32, 20.0)  # fastest
    b = row("lamina", "2xH100", "2xH20", 1000.0, 31.38, 30.0)  # slower and dearer than a: off
    c = row("lamina", "2xH100", "4xH20", 5000.0, 40.64, 50.0)  # slower but cheaper per token: on
    assert frontier([b, c, a]) == [a, c]


def _moved(r: PointRow, key: str, factor: float, **change) -> PointRow:
    """A copy of `r` under another id and workload, tokens per USD scaled so every point stays unique."""
    metrics = {**r.metrics, "tokens_per_usd": r.metrics["tokens_per_usd"] * factor}
    return r.replace(point_id=point_id({key: r.point_id}), metrics=metrics, **change)


def test_report_opens_with_the_verdict_and_every_frontier_has_one_model_and_workload(tmp_path):
    rows = [H, H_SLOW, L, L_FAST]
    rows += [_moved(r, "k", 1.01, trace="kimi-conv") for r in rows]
    rows += [_moved(r, "m", 1.02, model="llama-65b") for r in rows[:4]]
    run = write_run(tmp_path, "v", rows)
    page = render_report(load_runs([run]), js="/* plotly */")
    assert (
        page.index('<section id="verdict">') < page.index('<section id="pareto">') < page.index('id="runs"')
    )
    verdict = page[page.index('<section id="verdict">') : page.index('<section id="pareto">')]
    assert verdict.count("<h3>") == 3 and "Lamina does not pay" in verdict and "H20 at 4.42 USD/h" in verdict
    labels = {group_label(r) for r in rows}
    figures = re.findall(r"<figcaption>.*?</figcaption>", page, re.S)
    frontier_figures = [f for f in figures if "Pareto frontier" in f]
    assert len(frontier_figures) == 2 * len(labels) == 6  # TBT and interactivity, per model and workload
    for caption in frontier_figures:
        assert sum(label in caption for label in labels) == 1, caption
    # every point drawn in a frontier figure is a row of the model and workload its title names
    by_value = {round(r.metrics["tokens_per_usd"], 3): r for r in rows}
    specs = json.loads(re.search(r'id="report-figures">(.*?)</script>', page, re.S).group(1))
    drawn = 0
    for spec in specs.values():
        title = spec["layout"]["title"]["text"]
        if "Pareto frontier" not in title:
            continue
        groups = {group_label(by_value[round(y, 3)]) for trace in spec["data"] for y in trace["y"]}
        assert len(groups) == 1 and title.startswith(groups.pop()), title
        drawn += 1
    assert drawn == 6
