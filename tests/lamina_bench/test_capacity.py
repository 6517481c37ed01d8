"""Capacity at an SLO (model/capacity.py): the search's answer meets the SLO, a rate within the tolerance
above it does not, USD per M output tokens by hand, the CLI and its bad input."""

import json

import numpy as np
import pytest

from lamina_bench import cli
from lamina_bench.catalog.devices import parse_mix
from lamina_bench.catalog.models import get_model
from lamina_bench.catalog.workloads import poisson_arrivals, synthetic_trace
from lamina_bench.errors import UserInputError
from lamina_bench.model.capacity import capacity, meets_slo
from lamina_bench.model.scheduler import Scheduler
from lamina_bench.model.simulator import simulate
from lamina_bench.model.system import SystemConfig

LLAMA31_8B = get_model("llama3.1-8b")


def _config(pool=None) -> SystemConfig:
    return SystemConfig(
        "homogeneous", LLAMA31_8B, parse_mix("1xH100"), scheduler=Scheduler("vllm", prefill_pool=pool)
    )


def test_poisson_arrivals_at_a_rate_are_those_at_rate_one_compressed():
    """The search's premise: with the seed fixed, every rate replays the same pattern."""
    assert np.allclose(poisson_arrivals(50, 4.0, 3), poisson_arrivals(50, 1.0, 3) / 4.0, rtol=1e-12)


@pytest.mark.parametrize("pool", [None, "1xH100"])
def test_capacity_meets_the_slo_and_the_next_rate_does_not(pool):
    trace = synthetic_trace(200, (200, 2000), (2, 200), seed=1)
    config = _config(parse_mix(pool) if pool else None)
    found = capacity(config, trace, ttft_slo_ms=300.0, tpot_slo_ms=30.0, rel_tol=0.02)
    assert found.bounded and found.rate_per_s is not None
    again = simulate(config, trace, "poisson", found.rate_per_s, 0)
    assert meets_slo(again, 300.0, 30.0)
    assert again.p99_ttft_ms == found.at_capacity.p99_ttft_ms  # deterministic
    misses = [p.rate_per_s for p in found.probes if not p.feasible and p.rate_per_s > found.rate_per_s]
    assert misses and min(misses) <= found.rate_per_s * 1.02 * (1 + 1e-12)
    # USD per M output tokens = USD/h / (3600 s x rate x mean output tokens) x 1e6
    mean_out = float(trace.output_len.mean())
    assert found.usd_per_mtok == pytest.approx(
        found.cost_usd_per_hour / (3600 * found.rate_per_s * mean_out) * 1e6, rel=1e-12
    )


def test_an_slo_nothing_meets_gives_no_rate():
    trace = synthetic_trace(50, 1000, 10)
    found = capacity(_config(), trace, ttft_slo_ms=1e-3, tpot_slo_ms=1e-3)
    assert (
        found.rate_per_s is None and found.usd_per_mtok is None and not any(p.feasible for p in found.probes)
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ttft_slo_ms": 0.0, "tpot_slo_ms": 10.0}, "--ttft-slo-ms must be a positive"),
        ({"ttft_slo_ms": 100.0, "tpot_slo_ms": -5.0}, "--tpot-slo-ms must be a positive"),
        ({"ttft_slo_ms": 100.0, "tpot_slo_ms": 10.0, "rel_tol": 0.0}, "tolerance"),
    ],
)
def test_capacity_bad_input(kwargs, message):
    with pytest.raises(UserInputError, match=message):
        capacity(_config(), synthetic_trace(5, 100, 5), **kwargs)
    reserve_all = SystemConfig("homogeneous", LLAMA31_8B, parse_mix("1xH100"))
    with pytest.raises(UserInputError, match="vllm"):
        capacity(reserve_all, synthetic_trace(5, 100, 5), 100.0, 10.0)


_CAP = ["capacity", "--model", "llama3.1-8b", "--system", "homogeneous", "--compute", "1xH100", "--trace",
        "azure-conv", "--requests", "60", "--prices", "paper-2025"]  # fmt: skip


def test_capacity_cli_json(capsys):
    assert cli.main(_CAP + ["--ttft-slo-ms", "500", "--tpot-slo-ms", "40", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["capacity_req_per_s"] > 0 and out["capacity_usd_per_mtok"] > 0 and out["requests"] == 60
    assert out["at_capacity"]["p99_ttft_ms"] <= 500 and out["source"] in ("modeled", "derived")


@pytest.mark.parametrize(
    "argv, message",
    [
        (_CAP + ["--ttft-slo-ms", "0", "--tpot-slo-ms", "40"], "--ttft-slo-ms must be a positive finite"),
        (_CAP + ["--ttft-slo-ms", "100"], "needs both --ttft-slo-ms and --tpot-slo-ms"),
        (
            [
                "capacity",
                "--model",
                "llama3-70b",
                "--system",
                "homogeneous",
                "--compute",
                "4xH100",
                "--trace",
                "azure-conv",
                "--prices",
                "paper-2025",
                "--prefill-pool",
                "1xH100",
                "--ttft-slo-ms",
                "100",
                "--tpot-slo-ms",
                "40",
            ],
            "does not fit on prefill pool 1xH100",
        ),  # fmt: skip  # fmt: skip
        (
            ["simulate"] + _CAP[1:] + ["--scheduler", "vllm", "--arrival", "poisson", "--rate", "-2"],
            "arrival rate must be a positive",
        ),  # fmt: skip
        (["simulate"] + _CAP[1:] + ["--scheduler", "vllm", "--tpot-slo-ms", "0"], "--tpot-slo-ms must be"),
        (["simulate"] + _CAP[1:] + ["--prefill-pool", "1xH100"], "apply to --scheduler vllm only"),
        (["simulate", "--paper", "--prefill-pool", "1xH100"], "drop --prefill-pool"),
        (
            ["capacity", "--model", "mixtral-8x7b"]
            + _CAP[3:]
            + ["--ttft-slo-ms", "1000", "--tpot-slo-ms", "50"],
            "mixtral-8x7b is a mixture-of-experts model",
        ),
    ],
)
def test_bad_serving_input_is_one_line_exit_2(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
