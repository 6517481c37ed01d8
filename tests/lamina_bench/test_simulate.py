"""Trace replay: hand-checked tiny cases, invariants, a naive reference on random traces, the CLI."""

import json

import numpy as np
import pytest

from lamina_bench import cli
from lamina_bench.catalog.devices import get_device, parse_mix
from lamina_bench.catalog.models import get_model, spec_from_hf_config
from lamina_bench.catalog.workloads import load_trace, poisson_arrivals, synthetic_trace
from lamina_bench.errors import UserInputError
from lamina_bench.model.iteration import iteration_model
from lamina_bench.model.operators import DeviceModel, device_model
from lamina_bench.model.paper import paper_comparisons
from lamina_bench.model.reference import ReferenceRun, predict_reference_run
from lamina_bench.model.replay import replay
from lamina_bench.model.simulator import simulate
from lamina_bench.model.system import SystemConfig, memory_plan
from lamina_bench.report.text import comparisons_markdown
from tests.lamina_bench.test_perfmodel import TINY, make_profile

LLAMA3_70B = get_model("llama3-70b")
CALIBRATED = device_model(get_device("H100")).profile_name  # the default operator model's name
DESIGN_JSON_KEYS = {
    "system",
    "model",
    "trace",
    "compute",
    "attention",
    "requests",
    "generated_tokens",
    "throughput_tok_per_s",
    "mean_batch_size",
    "max_batch_size",
    "tbt_p50_ms",
    "tbt_p99_ms",
    "cost_usd_per_hour",
    "tokens_per_usd",
    "net_bytes_per_token",
    "net_peak_gbps",
    "source",
    "profile",
}


def const_time(batch, sum_context):
    return np.full(np.broadcast(batch, sum_context).shape, 0.010)


def affine_time(batch, sum_context):
    return 1e-3 + 1e-5 * np.asarray(batch, dtype=float) + 1e-8 * np.asarray(sum_context, dtype=float)


def run(prompts, outputs, arrivals=None, capacity=10**9, time_fn=const_time, cap=None):
    arrivals = np.zeros(len(prompts)) if arrivals is None else np.asarray(arrivals, dtype=float)
    return replay(
        np.array(prompts), np.array(outputs), arrivals, capacity, time_fn, cap, follow_arrivals=arrivals.any()
    )


# ---- hand-checked tiny cases ------------------------------------------------------------------------


def test_two_requests_fit_together():
    # r0: prompt 10, 3 tokens; r1: prompt 5, 2 tokens; both admitted at iteration 0.
    rep = run([10, 5], [3, 2])
    np.testing.assert_array_equal(rep.batch, [2, 2, 1])
    np.testing.assert_array_equal(rep.sum_context, [15, 17, 12])  # 10+5, 11+6, 12
    np.testing.assert_array_equal(rep.finish_iteration, [2, 1])
    assert rep.end_s == pytest.approx(0.030)


def test_second_request_waits_for_kv():
    # capacity 15: r0 reserves 13, r1 needs 7 -> r1 starts after r0 frees its KV at the end of iteration 2
    rep = run([10, 5], [3, 2], capacity=15)
    np.testing.assert_array_equal(rep.batch, [1, 1, 1, 1, 1])
    np.testing.assert_array_equal(rep.sum_context, [10, 11, 12, 5, 6])
    np.testing.assert_array_equal(rep.admit_iteration, [0, 3])
    np.testing.assert_array_equal(rep.kv_reserved_tokens, [13, 13, 13, 7, 7])


def test_trace_arrival_joins_at_next_iteration_and_idle_gap():
    # r1 arrives at 25 ms, during iteration 2 (20-30 ms), and joins at iteration 3;
    # r2 arrives at 1 s, after everything finished: the system idles until then.
    rep = run([10, 5, 4], [5, 2, 1], arrivals=[0.0, 0.025, 1.0])
    np.testing.assert_array_equal(rep.batch, [1, 1, 1, 2, 2, 1])
    np.testing.assert_array_equal(rep.admit_iteration, [0, 3, 5])
    np.testing.assert_allclose(rep.start_s, [0, 0.01, 0.02, 0.03, 0.04, 1.0])
    assert rep.end_s == pytest.approx(1.01)


def test_max_batch_cap_and_rejection():
    rep = run([1, 1, 1, 50], [2, 2, 2, 1], capacity=20, cap=2)
    assert rep.batch.max() == 2
    np.testing.assert_array_equal(rep.admit_iteration, [0, 0, 2, -1])  # the 51-token request never fits
    assert int(rep.batch.sum()) == 6


# ---- comparison with a naive per-request simulator on random traces -----------------------------------


def naive_replay(prompt, output, arrival, capacity, time_fn, cap, follow):
    """One Python step per iteration and per request: obviously right, slow."""
    need = prompt + output
    queue = [r for r in range(len(prompt)) if need[r] <= capacity]
    running, done = {}, {}
    t, free, it, rows = 0.0, capacity, 0, []
    while queue or running:
        while (
            queue
            and len(running) < (cap or 10**9)
            and need[queue[0]] <= free
            and (not follow or arrival[queue[0]] <= t)
        ):
            r = queue.pop(0)
            running[r], free = 0, free - need[r]
        if not running:
            t = max(t, arrival[queue[0]])
            continue
        b = len(running)
        s = sum(prompt[r] + g for r, g in running.items())
        dt = float(time_fn(b, np.array([s]))[0])
        rows.append((b, s, t, dt))
        t += dt
        for r in list(running):
            running[r] += 1
            if running[r] == output[r]:
                del running[r]
                done[r], free = it, free + need[r]
        it += 1
    return np.array(rows), done


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("follow", [False, True])
def test_replay_matches_naive_reference(seed, follow):
    rng = np.random.default_rng(seed)
    n = 60
    prompt = rng.integers(1, 200, n)
    output = rng.integers(1, 40, n)
    arrival = np.sort(rng.uniform(0, 0.5, n)) if follow else np.zeros(n)
    capacity = int(rng.integers(300, 3000))
    cap = int(rng.integers(2, 20)) if seed % 2 else None
    rows, done = naive_replay(prompt, output, arrival, capacity, affine_time, cap, follow)
    rep = replay(prompt, output, arrival, capacity, affine_time, cap, follow_arrivals=follow)
    np.testing.assert_array_equal(rep.batch, rows[:, 0])
    np.testing.assert_array_equal(rep.sum_context, rows[:, 1])
    np.testing.assert_allclose(rep.start_s, rows[:, 2], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(rep.time_s, rows[:, 3], rtol=1e-12)
    assert {r: int(rep.finish_iteration[r]) for r in done} == done


# ---- invariants on synthetic traces through the full simulator ------------------------------------------


@pytest.mark.parametrize("system", ["homogeneous", "lamina"])
@pytest.mark.parametrize("arrival", ["saturate", "trace", "poisson"])
def test_invariants(system, arrival):
    trace = synthetic_trace(300, (100, 3000), (1, 400), rate_per_s=20.0, seed=3)
    if system == "lamina":
        config = SystemConfig("lamina", LLAMA3_70B, parse_mix("2xH100"), parse_mix("1xH20"))
    else:
        config = SystemConfig("homogeneous", LLAMA3_70B, parse_mix("2xH100"))
    capacity = memory_plan(config).kv_capacity_tokens
    model = iteration_model(config)
    arrivals = trace.arrival_s if arrival != "poisson" else poisson_arrivals(len(trace), 20.0, 0)
    rep = replay(
        trace.prompt_len,
        trace.output_len,
        arrivals,
        capacity,
        model.time_s,
        follow_arrivals=arrival != "saturate",
    )
    result = simulate(config, trace, arrival=arrival, rate_per_s=20.0)
    assert result.requests == len(trace) and result.rejected_requests == 0
    assert result.generated_tokens == int(trace.output_len.sum()) == int(rep.batch.sum())
    assert rep.kv_reserved_tokens.max() <= capacity and result.kv_peak_tokens <= capacity
    assert np.all(rep.finish_iteration - rep.admit_iteration + 1 == trace.output_len)
    if arrival != "saturate":  # nobody starts before arriving
        assert np.all(rep.start_s[rep.admit_iteration] >= arrivals - 1e-12)
    assert result.tbt_p50_ms <= result.tbt_p90_ms <= result.tbt_p99_ms
    assert set(result.to_dict()) >= DESIGN_JSON_KEYS
    assert result.source == "modeled" and result.profile == CALIBRATED


def test_deterministic_for_a_seed():
    trace = load_trace("azure-code").head(500)
    config = SystemConfig("lamina", LLAMA3_70B, parse_mix("2xH100"), parse_mix("4xH20"))
    a = simulate(config, trace, arrival="poisson", rate_per_s=3.0, seed=7)
    b = simulate(config, trace, arrival="poisson", rate_per_s=3.0, seed=7)
    c = simulate(config, trace, arrival="poisson", rate_per_s=3.0, seed=8)
    assert a == b and a != c


def test_lamina_timing_composition_by_hand():
    config = SystemConfig("lamina", LLAMA3_70B, parse_mix("2xH100"), parse_mix("4xH20"), pipeline_batches=1)
    model = iteration_model(config, operators="roofline")  # the hand-worked link below is roofline's
    c, a, L = model.compute, model.attention, 80
    b, s = 200.0, 200.0 * 1500
    t_m = c.dense_layer(LLAMA3_70B, "fp16", b, 2).time_s + 2 * c.allreduce(b * 8192 * 2, 2).time_s
    t_a = a.attention_layer(LLAMA3_70B, "fp16", b, s, 0.25).time_s
    # link: 2 x 10 us latency + 200 x 36,864 B over min(2 x 45 GB/s, 4 x 45 GB/s)
    t_n = 2 * 10e-6 + b * 36_864 / (2 * 400e9 / 8 * 0.9)
    head = c.head(LLAMA3_70B, "fp16", b, 2).time_s
    assert float(model.time_s(b, s)) == pytest.approx(L * (t_m + t_a + t_n) + head)
    # ping-pong: two micro-batches of 100; the compute pool is busy 2 x t_m(100) per layer
    pp_config = SystemConfig("lamina", LLAMA3_70B, parse_mix("2xH100"), parse_mix("4xH20"))
    pp = iteration_model(pp_config, operators="roofline")
    t_m2 = c.dense_layer(LLAMA3_70B, "fp16", 100, 2).time_s + 2 * c.allreduce(100 * 8192 * 2, 2).time_s
    t_a2 = a.attention_layer(LLAMA3_70B, "fp16", 100, s / 2, 0.25).time_s
    t_n2 = 2 * 10e-6 + 100 * 36_864 / (2 * 400e9 / 8 * 0.9)
    cycle = max(2 * t_m2, 2 * t_a2, t_m2 + t_a2 + t_n2)
    assert float(pp.time_s(b, s)) == pytest.approx(L * cycle + 2 * c.head(LLAMA3_70B, "fp16", 100, 2).time_s)


def test_rotational_pipelining_uses_replicas():
    # 4 H100 as 2 replicas of TP2 with 3 batches: each replica sees 3/2 micro-batches per cycle
    config = SystemConfig("lamina", LLAMA3_70B, parse_mix("4xH100"), parse_mix("4xH20"), pipeline_batches=3)
    assert (config.replicas, config.tp) == (2, 2)
    with pytest.raises(UserInputError, match="3 equal replicas"):
        SystemConfig("lamina", LLAMA3_70B, parse_mix("4xH100"), parse_mix("4xH20"), pipeline_batches=4)


def test_paper_setups_have_equal_cost_and_table_renders():
    rows = paper_comparisons(requests=150)
    assert len(rows) == 9
    for c in rows:
        assert c.homogeneous.cost_usd_per_hour in (pytest.approx(22.12), pytest.approx(44.24))
        assert c.lamina.cost_usd_per_hour in (pytest.approx(20.32), pytest.approx(40.64))
    table = comparisons_markdown(rows)
    assert sum(line.startswith("| llama") for line in table.splitlines()) == 9
    assert "| llama3-70b | kimi-conv | 4xH100 | 2xH100+4xH20 |" in table and f"profile: {CALIBRATED}" in table


def test_reference_run_prediction_by_hand():
    prof = make_profile()
    dm = DeviceModel(None, prof)
    run_h = ReferenceRun(TINY, "homogeneous", batch_size=4, context_len=32, decode_steps=3)
    pred = predict_reference_run(prof, run_h)
    ctx = 4 * (32 + np.arange(3))
    per_step = (
        2 * (dm.dense_layer(TINY, "fp32", 4).time_s + dm.attention_layer(TINY, "fp32", 4, ctx).time_s)
        + dm.head(TINY, "fp32", 4).time_s
        + 1e-4
    )
    assert pred.mean_tbt_s == pytest.approx(float(per_step.mean()))
    assert pred.throughput_tok_per_s == pytest.approx(12 / float(per_step.sum()))
    assert (pred.source, pred.profile) == ("modeled", "cpu-cpu")
    lam = predict_reference_run(
        prof, ReferenceRun(TINY, "lamina", 4, 32, 3, attention_workers=2, pipeline_batches=2)
    )
    assert lam.throughput_tok_per_s > 0


def test_spec_from_hf_config():
    from lamina_bench.catalog.models import hf_config

    spec = spec_from_hf_config(hf_config(LLAMA3_70B), "llama3-70b")
    for field in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "intermediate_size"):
        assert getattr(spec, field) == getattr(LLAMA3_70B, field)
    with pytest.raises(UserInputError, match="hidden_size"):
        spec_from_hf_config({"model_type": "llama"})


# ---- CLI --------------------------------------------------------------------------------------------


def test_cli_simulate_json(capsys):
    argv = [
        "simulate",
        "--model",
        "llama3-70b",
        "--system",
        "lamina",
        "--compute",
        "2xH100",
        "--attention",
        "4xH20",
        "--trace",
        "azure-conv",
        "--requests",
        "300",
        "--prices",
        "paper-2025",
        "--json",
    ]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= DESIGN_JSON_KEYS
    assert out["requests"] == 300 and out["net_bytes_per_token"] == 36_864 * 80
    assert out["price_set"] == "paper-2025" and out["cost_usd_per_hour"] == pytest.approx(
        2 * 11.06 + 4 * 4.63
    )
    # one definition of throughput: the same basis as the stored rows, the whole trace beside it
    if out["throughput_basis"] == "saturated phase":  # requests still queued after the first admissions
        assert out["throughput_tok_per_s"] == out["saturated_throughput_tok_per_s"]
    else:  # all 300 requests fit at once: no saturated phase
        assert out["throughput_basis"] == "whole trace" and out["saturated_throughput_tok_per_s"] is None
        assert out["throughput_tok_per_s"] == out["whole_trace_throughput_tok_per_s"]
    assert cli.main(argv[:-3] + ["--json"]) == 2  # the default price set has no H20
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "H20 has no price in price set coreweave-ondemand" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--model", "llama-7x", "--system", "homogeneous", "--compute", "4xH100"],
            "unknown model 'llama-7x'; valid:",
        ),
        (
            ["--model", "llama3-70b", "--system", "homogeneous", "--compute", "4xH999"],
            "unknown device 'H999'; valid:",
        ),
        (
            ["--model", "llama3-70b", "--system", "homogeneous", "--compute", "1xH100"],
            "does not fit on 1xH100",
        ),
        (["--model", "llama3-70b", "--system", "tp", "--compute", "4xH100"], "unknown system 'tp'; valid:"),
        (
            [
                "--model",
                "llama3-70b",
                "--system",
                "homogeneous",
                "--compute",
                "4xH100",
                "--arrival",
                "poisson",
            ],
            "needs a rate",
        ),
        (["--model", "llama3-70b"], "simulate needs --system, --compute"),
    ],
)
def test_cli_simulate_bad_input_is_one_line_exit_2(capsys, argv, message):
    full = ["simulate", *argv] + ([] if "--system" not in argv else ["--trace", "azure-conv"])
    assert cli.main(full) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_cli_unknown_trace(capsys):
    argv = [
        "simulate",
        "--model",
        "llama3-70b",
        "--system",
        "homogeneous",
        "--compute",
        "4xH100",
        "--trace",
        "x",
    ]
    assert cli.main(argv) == 2
    assert "unknown trace 'x'; valid: azure-conv" in capsys.readouterr().err


def test_attention_pool_cannot_exceed_the_kv_heads():
    from lamina_bench.catalog.devices import parse_mix
    from lamina_bench.catalog.models import get_model
    from lamina_bench.errors import UserInputError
    from lamina_bench.model.system import SystemConfig

    spec = get_model("llama3-70b")  # 8 KV heads
    SystemConfig("lamina", spec, parse_mix("2xH100"), parse_mix("8xH20"))
    with pytest.raises(UserInputError, match="at most 8 attention devices"):
        SystemConfig("lamina", spec, parse_mix("2xH100"), parse_mix("16xH20"))


def test_iteration_times_of_a_whole_replay_equal_one_iteration_at_a_time():
    # the dense part and the head are computed once per distinct batch size (IterationModel._per_batch)
    rng = np.random.default_rng(1)
    batch = rng.integers(0, 400, 500).astype(float)
    context = batch * rng.uniform(100, 3000, 500)
    for config in (
        SystemConfig("homogeneous", LLAMA3_70B, parse_mix("4xH100")),
        SystemConfig("lamina", LLAMA3_70B, parse_mix("4xH100"), parse_mix("4xH20"), pipeline_batches=3),
    ):
        model = iteration_model(config)
        whole = model.time_s(batch, context)
        one_by_one = [float(model.time_s(b, s)) for b, s in zip(batch[:60], context[:60], strict=True)]
        assert whole[:60].tolist() == pytest.approx(one_by_one, rel=1e-12)
