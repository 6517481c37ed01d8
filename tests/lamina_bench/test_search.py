"""Cost arithmetic, the equal-cost baseline and the configuration search."""

import json

import pytest

from lamina_bench import cli
from lamina_bench.catalog.devices import DeviceMix, get_device, load_catalog
from lamina_bench.catalog.devices import parse_mix as _parse_mix
from lamina_bench.catalog.models import get_model
from lamina_bench.catalog.workloads import load_trace
from lamina_bench.errors import UserInputError
from lamina_bench.model.cost import (
    equal_cost_homogeneous,
    mixes_cost_usd_per_hour,
    tokens_per_usd,
    usd_per_mtok,
)
from lamina_bench.model.search import search
from lamina_bench.report.text import search_table

PAPER = load_catalog(prices="paper-2025")  # the paper's prices: H100 $11.06/h, H20 $4.63/h


def parse_mix(text: str) -> DeviceMix:
    return _parse_mix(text, PAPER)


def test_mix_cost_and_tokens_per_usd_by_hand():
    # paper prices: H100 $11.06/h, H20 $4.63/h
    assert mixes_cost_usd_per_hour(parse_mix("2xH100"), parse_mix("4xH20")) == pytest.approx(40.64)
    assert mixes_cost_usd_per_hour(parse_mix("4xH100"), None) == pytest.approx(44.24)
    # 1,000 tok/s for an hour = 3.6 M tokens for $40 -> 90,000 tok/$, $11.11 per M tokens
    assert tokens_per_usd(1000.0, 40.0) == pytest.approx(90_000)
    assert usd_per_mtok(1000.0, 40.0) == pytest.approx(40 / 3.6)
    assert tokens_per_usd(1000.0, None) is None
    assert mixes_cost_usd_per_hour(DeviceMix(1, get_device("L20"))) is None  # no price: n/a, not 0


def test_equal_cost_homogeneous_matches_the_paper():
    assert str(equal_cost_homogeneous(parse_mix("1xH100"), parse_mix("2xH20"))) == "2xH100"
    assert str(equal_cost_homogeneous(parse_mix("2xH100"), parse_mix("4xH20"))) == "4xH100"
    assert str(equal_cost_homogeneous(parse_mix("2xH100"), parse_mix("4xH20"), "H20", PAPER)) == "8xH20"
    with pytest.raises(UserInputError, match="no price"):
        equal_cost_homogeneous(parse_mix("1xH100"), parse_mix("2xL20"))


@pytest.fixture(scope="module")
def small_search():
    return search(
        get_model("llama3-70b"),
        load_trace("azure-conv"),
        tbt_slo_ms=60.0,
        budget_usd_per_hour=70.0,
        devices=["H100", "H20"],
        requests=400,
        simulate_top=4,
        catalog=PAPER,
        price_set="paper-2025",
    )


def test_search_respects_slo_and_budget(small_search):
    res = small_search
    assert res.ranked, res.dropped
    for cand in res.ranked:
        assert cand.result.tbt_p99_ms <= 60.0
        assert cand.result.cost_usd_per_hour <= 70.0
        assert cand.result.requests == 400
    scores = [c.tokens_per_usd for c in res.ranked]
    assert scores == sorted(scores, reverse=True)
    assert res.best_homogeneous.config.system == "homogeneous"
    assert res.best_lamina.config.system == "lamina"
    assert any("does not fit" in d for d in res.dropped)  # e.g. 1xH100 for a 141 GB model
    table = search_table(res)
    assert table.index("verdict: Lamina") < table.index("frontier") < table.index("ranked by tokens per USD")
    assert "prices paper-2025" in table and "| lamina |" in table and "| homogeneous |" in table
    verdict = res.verdict()
    ratio = res.best_lamina.tokens_per_usd / res.best_homogeneous.tokens_per_usd
    assert verdict.ratio == pytest.approx(ratio)
    device, price = (
        verdict.break_even
    )  # at that price of an H20, Lamina's tokens per USD equal the baseline's
    lamina = res.best_lamina.result
    cost = (
        lamina.cost_usd_per_hour
        - int(lamina.attention.split("x")[0]) * 4.63
        + int(lamina.attention.split("x")[0]) * price
    )
    assert device == "H20" and lamina.saturated_throughput_tok_per_s * 3600 / cost == pytest.approx(
        res.best_homogeneous.tokens_per_usd
    )


def test_search_cap_tightens_with_the_slo():
    model, trace = get_model("llama3-8b"), load_trace("azure-code")
    loose = search(model, trace, 200.0, devices=["H100"], requests=300, simulate_top=2)
    tight = search(model, trace, 15.0, devices=["H100"], requests=300, simulate_top=2)
    assert all(c.result.tbt_p99_ms <= 15.0 for c in tight.ranked)
    assert tight.best_homogeneous.result.max_batch_size <= loose.best_homogeneous.result.max_batch_size


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tbt_slo_ms": -1.0}, "TBT SLO must be a positive"),
        ({"budget_usd_per_hour": 0.0}, "budget must be a positive"),
        ({"devices": ["H999"]}, "unknown device 'H999'; valid:"),
        ({"devices": ["L20"]}, "L20 has no price in price set coreweave-ondemand"),
        ({"devices": ["H20"]}, "H20 has no price in price set coreweave-ondemand.*it prices H100"),
    ],
)
def test_search_bad_input(kwargs, message):
    with pytest.raises(UserInputError, match=message):
        search(get_model("llama3-8b"), load_trace("azure-code"), requests=10, **kwargs)


def test_cli_search_json_and_errors(capsys):
    argv = [
        "search",
        "--model",
        "llama3-8b",
        "--trace",
        "azure-code",
        "--devices",
        "H100,H20",
        "--prices",
        "paper-2025",
        "--requests",
        "200",
        "--tbt-slo-ms",
        "40",
        "--json",
    ]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["requests_used"] == 200 and out["ranked"][0]["tokens_per_usd"] > 0
    assert out["price_set"] == "paper-2025" and out["verdict"]["answer"].startswith("Lamina")
    assert set(out["frontier"]) == {"homogeneous", "lamina"}
    assert cli.main(["search", "--model", "llama3-8b", "--trace", "azure-code", "--tbt-slo-ms", "-5"]) == 2
    err = capsys.readouterr().err
    assert "TBT SLO must be a positive" in err and err.count("\n") == 1


def test_default_search_ranks_only_devices_priced_in_the_default_set():
    res = search(
        get_model("llama3-70b"), load_trace("azure-conv"), tbt_slo_ms=50.0, requests=300, simulate_top=3
    )
    priced = {d.name for d in load_catalog().values() if d.usd_per_hour is not None}
    assert res.price_set == "coreweave-ondemand-2026-09-20" and set(res.devices) <= priced
    used = {
        m.split("x", 1)[1]
        for c in res.ranked
        for m in (str(c.config.compute), str(c.config.attention or ""))
        if m
    }
    assert used and used <= priced and "MI300X" not in used and "H20" not in used
