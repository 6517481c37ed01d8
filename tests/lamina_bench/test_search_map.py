"""`search` through another map than the built-in one (its `map_fn`), and `search --executor` without a
cluster: the same result whatever order the items run in, the options' errors, and no Ray on the default
path."""

from __future__ import annotations

import pytest

from lamina_bench import cli
from lamina_bench.catalog.devices import load_catalog
from lamina_bench.catalog.models import get_model
from lamina_bench.catalog.workloads import load_trace
from lamina_bench.model.capacity import rank_by_capacity
from lamina_bench.model.search import search
from tests.ray_support import without_ray

PAPER = load_catalog(prices="paper-2025")  # H100 $11.06/h, H20 $4.63/h
TRACE = load_trace("azure-conv")
SMALL = {"tbt_slo_ms": 60.0, "budget_usd_per_hour": 70.0, "devices": ["H100", "H20"], "requests": 100,
         "simulate_top": 2, "catalog": PAPER, "price_set": "paper-2025"}  # fmt: skip
SEARCH_ARGS = ["search", "--model", "llama3-8b", "--trace", "azure-code", "--devices", "H100,H20", "--prices",
               "paper-2025", "--requests", "100", "--tbt-slo-ms", "40", "--json"]  # fmt: skip


class BackwardsMap:
    """Runs the items last first (as workers may finish them), hands the results back in the items' order,
    and records (function, item count) of each map."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, fn, items):
        items = list(items)
        self.calls.append((fn.func.__name__, len(items)))
        return [fn(item) for item in reversed(items)][::-1]


@pytest.fixture(scope="module")
def plain():
    return search(get_model("llama3-70b"), TRACE, **SMALL)


def test_search_through_another_map_gives_the_same_result(plain):
    backwards = BackwardsMap()
    other = search(get_model("llama3-70b"), TRACE, **SMALL, map_fn=backwards)
    assert other.to_dict() == plain.to_dict() and len(plain.ranked) >= 2  # same ranking, same numbers
    assert [name for name, _ in backwards.calls] == ["_screen_one", "_replay_scored"]
    screen_drops = [d for d in plain.dropped if "at every batch cap tried" not in d]
    assert backwards.calls[0][1] == plain.screened + len(screen_drops)  # every configuration within budget
    # the best 2 estimates of each system (homogeneous, Lamina) are replayed: 4 items
    assert backwards.calls[1][1] == 4 == len(plain.ranked) + len(plain.dropped) - len(screen_drops)


def test_the_capacity_ranking_through_a_map_is_the_one_without(plain):
    candidates, subset = plain.ranked[:2], TRACE.head(40)  # the two best by tokens/$ (few requests: fast)
    direct = rank_by_capacity(candidates, subset, 3000.0, 60.0)
    mapped = rank_by_capacity(candidates, subset, 3000.0, 60.0, BackwardsMap())
    assert [c.to_dict() for c in mapped] == [c.to_dict() for c in direct]
    costs = [c.capacity.usd_per_mtok for c in mapped]
    assert all(c is not None for c in costs) and costs == sorted(costs)  # cheapest at capacity first
    assert [c.config for c in mapped] == [c.config for c in reversed(candidates)]  # not the tokens/$ order


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--executor", "local", "--address", "127.0.0.1:6379"], "--address applies to --executor ray only"),
        (["--executor", "spark"], "unknown executor 'spark'; valid: local, ray"),
    ],
    ids=["address-with-local", "unknown-executor"],
)
def test_search_executor_options_are_checked(options, message, capsys):
    assert cli.main([*SEARCH_ARGS, *options]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"lamina-bench: error: {message}\n" and captured.out == ""


def test_without_ray_search_on_ray_says_how_to_install_it():
    done = without_ray(*SEARCH_ARGS, "--executor", "ray")
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "--executor ray needs Ray" in line and "pip install 'lamina-bench[ray]'" in line
    assert done.stdout.startswith("RAY-IMPORTS")  # nothing printed before the error


def test_the_default_search_never_imports_ray():
    done = without_ray(*SEARCH_ARGS)
    assert done.returncode == 0, done.stderr
    assert '"ranked": [{' in done.stdout and done.stdout.rstrip().endswith("RAY-IMPORTS 0 0")
