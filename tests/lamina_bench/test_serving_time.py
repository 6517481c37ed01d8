"""The tabulated serving time against the exact model it copies (model/serving_time.py)."""

import numpy as np
import pytest

import lamina_bench.model.simulator as simulator
from lamina_bench.catalog.devices import parse_mix
from lamina_bench.catalog.models import get_model
from lamina_bench.catalog.workloads import synthetic_trace
from lamina_bench.model.iteration import iteration_model
from lamina_bench.model.prefill import ServingIterationModel
from lamina_bench.model.scheduler import Scheduler
from lamina_bench.model.serving_time import ServingTimeTable
from lamina_bench.model.system import SystemConfig, memory_plan

VLLM = Scheduler("vllm")


def _pair(system: str, operators: str = "roofline"):
    if system == "lamina":
        config = SystemConfig(
            "lamina", get_model("llama3-70b"), parse_mix("2xH100"), parse_mix("4xH20"), scheduler=VLLM
        )
    else:
        config = SystemConfig("homogeneous", get_model("llama3.1-8b"), parse_mix("1xH100"), scheduler=VLLM)
    exact = ServingIterationModel(iteration_model(config, operators=operators), VLLM)
    rows = VLLM.max_num_seqs + VLLM.max_num_batched_tokens
    return exact, ServingTimeTable(exact, rows, memory_plan(config).kv_capacity_tokens)


@pytest.mark.parametrize("operators", ["roofline", "calibrated"])
@pytest.mark.parametrize("system", ["homogeneous", "lamina"])
def test_table_matches_the_exact_model(system, operators):
    exact, table = _pair(system, operators)
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 257, 400)
    context = batch * np.exp(rng.uniform(0, np.log(20_000), 400))
    want = exact.time_s(batch, context, 0, 0.0, 0, 0)
    got = np.array([table(int(b), float(s), 0, 0.0, 0, 0) for b, s in zip(batch, context, strict=True)])
    assert np.allclose(got, want, rtol=1e-12, atol=0)
    tokens = rng.integers(1, 8000, 200)
    b2 = rng.integers(0, 200, 200)
    pairs = tokens * (tokens + 1) / 2.0
    want = exact.time_s(b2, b2 * 900.0, tokens, pairs, 1, 1)
    got = [
        table(int(b), float(b) * 900.0, int(t), float(p), 1, 1)
        for b, t, p in zip(b2, tokens, pairs, strict=True)
    ]
    assert np.allclose(got, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("system", ["homogeneous", "lamina"])
def test_decode_run_times_and_cut_match_a_cumulative_sum(system):
    exact, table = _pair(system)
    for batch, s0, steps in ((7, 7 * 300.0, 30), (120, 120 * 2000.0, 400), (1, 50.0, 10)):
        want = exact.time_s(batch, s0 + batch * np.arange(steps), 0, 0.0, 0, 0)
        assert np.allclose(table.decode_run(batch, s0, steps, 0.0, None), want, rtol=1e-12, atol=0)
        stop = 1.0 + float(np.cumsum(want)[steps // 2])
        cut = table.decode_run(batch, s0, steps, 1.0, stop)
        assert len(cut) == steps // 2 + 1  # the iteration that reaches `stop` is the last one


def test_kinks_are_found_on_the_lamina_roofline():
    """Lamina's cycle is a max of terms linear in S: some grid intervals hold a kink and go to the exact
    model; the rest interpolate."""
    _, table = _pair("lamina")
    table.decode_s(64, 64 * 1000.0)
    assert 0 < table.kinked[64].sum() < len(table.kinked[64])


def test_replays_through_the_table_equal_exact_replays(monkeypatch):
    config = SystemConfig("homogeneous", get_model("llama3.1-8b"), parse_mix("1xH100"), scheduler=VLLM)
    trace = synthetic_trace(300, (100, 3000), (1, 300), rate_per_s=15.0, seed=5)
    fast = simulator.simulate(config, trace, arrival="trace")
    monkeypatch.setattr(
        simulator, "_time_table", lambda model, cfg, cap: ServingIterationModel(model, cfg.scheduler).time_s
    )
    slow = simulator.simulate(config, trace, arrival="trace")
    assert fast.iterations == slow.iterations and fast.preemptions == slow.preemptions
    for name in ("p99_ttft_ms", "mean_tpot_ms", "p99_itl_ms", "makespan_s"):
        assert getattr(fast, name) == pytest.approx(getattr(slow, name), rel=1e-9)
