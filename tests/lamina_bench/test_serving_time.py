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
from lamina_bench.model.serving_time import TABLE_RTOL, ServingTimeTable
from lamina_bench.model.system import SystemConfig

VLLM = Scheduler("vllm")


MAX_CONTEXT = 20_000


def _pair(system: str, operators: str = "roofline"):
    if system == "lamina":
        config = SystemConfig(
            "lamina", get_model("llama3-70b"), parse_mix("2xH100"), parse_mix("4xH20"), scheduler=VLLM
        )
    else:
        config = SystemConfig("homogeneous", get_model("llama3.1-8b"), parse_mix("1xH100"), scheduler=VLLM)
    exact = ServingIterationModel(iteration_model(config, operators=operators), VLLM)
    rows = VLLM.max_num_seqs + VLLM.max_num_batched_tokens
    return exact, ServingTimeTable(exact, rows, VLLM.max_num_seqs, MAX_CONTEXT)


@pytest.mark.parametrize("operators", ["roofline", "calibrated"])
@pytest.mark.parametrize("system", ["homogeneous", "lamina"])
def test_table_matches_the_exact_model(system, operators):
    """Decode part: equal to the piecewise-linear roofline up to rounding, within the stated bound (3 x
    TABLE_RTOL) of the calibrated model; prefill part: the same closed form."""
    exact, table = _pair(system, operators)
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 257, 2000)
    context = np.array([rng.integers(b, b * MAX_CONTEXT + 1) for b in batch])
    want = exact.time_s(batch, context, 0, 0.0, 0, 0)
    got = np.array([table(int(b), int(s), 0, 0.0, 0, 0) for b, s in zip(batch, context, strict=True)])
    bound = 1e-12 if operators == "roofline" else 3 * TABLE_RTOL
    assert np.max(np.abs(got / want - 1)) <= bound
    tokens = rng.integers(1, 8000, 200)
    b2 = rng.integers(0, 200, 200)
    pairs = tokens * (tokens + 1) / 2.0
    want = exact.time_s(b2, b2 * 900, tokens, pairs, 1, 1)
    got = [
        table(int(b), int(b) * 900, int(t), float(p), 1, 1) for b, t, p in zip(b2, tokens, pairs, strict=True)
    ]
    if operators == "calibrated":  # the decode part is interpolated; the prefill part adds exactly
        want_decode = exact.time_s(b2, b2 * 900, 0, 0.0, 0, 0)
        decode = np.array([table.decode_s(int(b), int(b) * 900) for b in b2])
        want, got = want - want_decode, np.array(got) - decode - VLLM.cpu_overhead_per_request_s
        want = want - VLLM.cpu_overhead_per_request_s
    assert np.allclose(got, want, rtol=1e-9, atol=0)


def test_the_calibrated_steps_are_knots():
    """Where the attention launch steps (few sequences: splits change with the KV block count), S and S + 1
    around each declared step are knots, so no interpolation spans a jump; the roofline declares none."""
    exact, table = _pair("homogeneous", "calibrated")
    base = exact.base
    for batch in (1, 3, 10):  # 8 KV heads a sequence: up to 13 sequences leave the 132 SMs short of work
        steps = base.decode_breaks(batch, MAX_CONTEXT)
        steps = steps[steps < batch * MAX_CONTEXT]
        assert len(steps) > 10
        row = set(table.rows_s[batch])
        assert all(s in row and s + 1 in row for s in steps.tolist())
        jumps = exact.time_s(batch, steps + 1, 0, 0.0, 0, 0) - exact.time_s(batch, steps, 0, 0.0, 0, 0)
        assert np.abs(jumps).max() > 1e-7  # some steps are real jumps (> 0.1 us)
    assert len(base.decode_breaks(256, MAX_CONTEXT)) == 0  # enough sequences: one split whatever the context
    assert len(_pair("homogeneous", "roofline")[0].base.decode_breaks(1, MAX_CONTEXT)) == 0


@pytest.mark.parametrize("system", ["homogeneous", "lamina"])
def test_decode_run_times_and_cut(system):
    exact, table = _pair(system)
    for batch, s0, steps in ((7, 7 * 300, 30), (120, 120 * 2000, 400), (1, 50, 10)):
        want = exact.time_s(batch, s0 + batch * np.arange(steps), 0, 0.0, 0, 0)
        assert np.allclose(table.decode_run(batch, s0, steps, 0.0, None), want, rtol=1e-12, atol=0)
        stop = 1.0 + float(np.cumsum(want)[steps // 2] - want[steps // 2] / 2)  # within iteration steps // 2
        cut = table.decode_run(batch, s0, steps, 1.0, stop)
        assert len(cut) == steps // 2 + 1  # the iteration that reaches `stop` is the last one


def test_a_context_outside_the_table_is_an_error():
    _, table = _pair("homogeneous")
    with pytest.raises(ValueError, match="outside the table"):
        table.decode_s(4, 4 * MAX_CONTEXT + 1)


@pytest.mark.parametrize("operators", ["roofline", "calibrated"])
def test_replays_through_the_table_equal_exact_replays(operators, monkeypatch):
    """The same schedule as a replay that asks the exact model at every iteration (the Python loop), and
    latencies equal to rounding (roofline) or within the table's bound (calibrated)."""
    config = SystemConfig("homogeneous", get_model("llama3.1-8b"), parse_mix("1xH100"), scheduler=VLLM)
    trace = synthetic_trace(300, (100, 3000), (1, 300), rate_per_s=15.0, seed=5)
    model = iteration_model(config, operators=operators)
    fast = simulator.simulate(config, trace, arrival="trace", model=model)
    monkeypatch.setattr(
        simulator,
        "_time_table",
        lambda model, cfg, cap, trace: ServingIterationModel(model, cfg.scheduler).time_s,
    )
    slow = simulator.simulate(config, trace, arrival="trace", model=model)
    assert fast.iterations == slow.iterations and fast.preemptions == slow.preemptions
    rel = 1e-9 if operators == "roofline" else 3 * TABLE_RTOL
    for name in ("p99_ttft_ms", "mean_tpot_ms", "p99_itl_ms", "makespan_s"):
        assert getattr(fast, name) == pytest.approx(getattr(slow, name), rel=rel)
