"""Serving at an SLO by hand: TTFT of one request on an idle system, a D/D/1 queue, goodput with a known
share of misses, KV bytes moved per prefilled token, the prefill pool's link accounting, vLLM-named
latencies, and decode-only (reserve-all) latencies left empty."""

import numpy as np
import pytest

from lamina_bench.catalog.devices import parse_mix
from lamina_bench.catalog.models import DTYPE_BYTES, get_model, kv_bytes_per_token
from lamina_bench.catalog.workloads import Trace, synthetic_trace
from lamina_bench.model.iteration import iteration_model
from lamina_bench.model.prefill import ServingIterationModel, prefill_attention_layer_s
from lamina_bench.model.prefill_pool import fifo_starts, link_bytes_in_windows, prefill_pool
from lamina_bench.model.scheduler import Scheduler
from lamina_bench.model.simulator import simulate
from lamina_bench.model.summary import latency_fields
from lamina_bench.model.system import SystemConfig
from lamina_bench.results.metrics import METRICS

LLAMA3_70B = get_model("llama3-70b")
POOL = parse_mix("2xH100")


def _trace(arrival_s, prompt, output) -> Trace:
    n = len(arrival_s)
    return Trace(
        "hand",
        np.asarray(arrival_s, dtype=np.float64),
        np.full(n, prompt, dtype=np.int64),
        np.full(n, output, dtype=np.int64),
        "hand-made",
    )


def _config(system: str, pool=POOL, **knobs) -> SystemConfig:
    sched = Scheduler("vllm", prefill_pool=pool, **knobs)
    if system == "lamina":
        return SystemConfig("lamina", LLAMA3_70B, parse_mix("2xH100"), parse_mix("4xH20"), scheduler=sched)
    return SystemConfig("homogeneous", LLAMA3_70B, parse_mix("4xH100"), scheduler=sched)


def _pool_prefill_s(p: int) -> float:
    """A p-token prompt on the 2xH100 pool, composed here from the operators: L [dense layer + its two
    all-reduces + prefill attention] + head of one row + the CPU overhead of one request."""
    cfg = SystemConfig("homogeneous", LLAMA3_70B, POOL)
    base = iteration_model(cfg)
    spec, e, L = LLAMA3_70B, DTYPE_BYTES["fp16"], LLAMA3_70B.num_layers
    layer = base.compute.dense_layer(spec, "fp16", float(p), 2).time_s
    layer += 2 * base.compute.allreduce(float(p) * spec.hidden_size * e, 2).time_s
    attn = prefill_attention_layer_s(base.compute, spec, "fp16", p, p * (p + 1) / 2, 2)
    sched = Scheduler("vllm")
    return float(L * (layer + attn) + base.compute.head(spec, "fp16", 1.0, 2).time_s + sched.cpu_overhead(1))


# ---- TTFT of one request on an idle system = its prefill time ------------------------------------------


@pytest.mark.parametrize("arrival", [0.0, 5.0])
def test_ttft_of_one_request_on_a_pool_is_its_prefill_time(arrival):
    trace = _trace([arrival], 1000, 8)
    for system in ("homogeneous", "lamina"):
        r = simulate(_config(system), trace, arrival="trace")
        assert r.mean_ttft_ms == pytest.approx(_pool_prefill_s(1000) * 1e3, rel=1e-12)
        assert r.mean_queueing_delay_ms == 0.0


@pytest.mark.parametrize("system", ["homogeneous", "lamina"])
def test_ttft_of_one_request_colocated_is_its_prefill_iteration(system):
    config = _config(system, pool=None)
    serving = ServingIterationModel(iteration_model(config), config.scheduler)
    p = 1500
    expected = float(serving.time_s(0, 0, p, p * (p + 1) / 2, 1, 1))  # one iteration, no decodes
    for arrival in ("saturate", "trace"):
        r = simulate(config, _trace([3.0], p, 5), arrival=arrival)
        assert r.mean_ttft_ms == pytest.approx(expected * 1e3, rel=1e-12)


# ---- a D/D/1 queue: deterministic arrivals at rate lambda, deterministic service -----------------------


def _dd1(config, n, gap_s):
    """n one-token requests of 1000 tokens every `gap_s` seconds: only prefill, one at a time."""
    return simulate(config, _trace(np.arange(n) * gap_s, 1000, 1), arrival="trace")


@pytest.mark.parametrize("colocated", [False, True])
def test_dd1_queueing_delay_in_closed_form(colocated):
    """Service s per request; arrivals every g. Below capacity (g > s) nobody waits; above it request i
    waits i (s - g): the mean and median (n - 1)(s - g)/2, the p99 0.99 (n - 1)(s - g) (linear ramp)."""
    if colocated:  # one request per iteration: the budget holds one prompt, one running request
        config = _config("homogeneous", pool=None, max_num_seqs=1, max_num_batched_tokens=1000)
        serving = ServingIterationModel(iteration_model(config), config.scheduler)
        s = float(serving.time_s(0, 0, 1000, 1000 * 1001 / 2, 1, 1))
    else:
        config = _config("homogeneous")
        s = _pool_prefill_s(1000)
    n = 101
    below = _dd1(config, n, 1.5 * s)
    assert below.mean_queueing_delay_ms == pytest.approx(0.0, abs=1e-9)  # clock sums: rounding only
    assert below.p99_queueing_delay_ms == pytest.approx(0.0, abs=1e-9)
    assert below.p99_ttft_ms == pytest.approx(s * 1e3, rel=1e-9)
    g = 0.5 * s
    above = _dd1(config, n, g)
    slope_ms = (s - g) * 1e3
    assert above.mean_queueing_delay_ms == pytest.approx((n - 1) / 2 * slope_ms, rel=1e-9)
    assert above.median_queueing_delay_ms == pytest.approx((n - 1) / 2 * slope_ms, rel=1e-9)
    assert above.p99_queueing_delay_ms == pytest.approx(0.99 * (n - 1) * slope_ms, rel=1e-9)
    assert above.mean_ttft_ms == pytest.approx(s * 1e3 + (n - 1) / 2 * slope_ms, rel=1e-9)


def test_fifo_starts_match_a_loop():
    rng = np.random.default_rng(1)
    a = np.sort(rng.uniform(0, 10, 300))
    s = rng.uniform(0, 0.1, 300)
    ref, t = [], 0.0
    for ai, si in zip(a, s, strict=True):
        t = max(ai, t)
        ref.append(t)
        t += si
    assert np.allclose(fifo_starts(a, s), ref, rtol=0, atol=1e-12)


# ---- goodput with a known share of SLO misses ----------------------------------------------------------


def test_goodput_counts_the_requests_within_the_slo():
    """The D/D/1 ramp above capacity: TTFT_i = s + i (s - g). An SLO between the TTFT of request 29 and
    that of request 30 passes exactly 30 of 101 requests; one-token requests meet any TPOT SLO."""
    config = _config("homogeneous")
    s = _pool_prefill_s(1000)
    g, n = 0.5 * s, 101
    slo_ms = (s + 29.5 * (s - g)) * 1e3
    trace = _trace(np.arange(n) * g, 1000, 1)
    r = simulate(config, trace, arrival="trace", ttft_slo_ms=slo_ms, tpot_slo_ms=1e-6)
    assert r.request_goodput * r.makespan_s == pytest.approx(30, rel=1e-12)
    assert r.request_throughput * r.makespan_s == pytest.approx(n, rel=1e-12)
    # TPOT alone: requests of 2 tokens, TPOT = one decode iteration; an SLO below it fails all of them
    r2 = simulate(config, _trace(np.arange(10) * 2 * s, 1000, 2), arrival="trace", tpot_slo_ms=1e-3)
    assert r2.request_goodput == 0.0
    r3 = simulate(config, _trace(np.arange(10) * 2 * s, 1000, 2), arrival="trace", tpot_slo_ms=1e6)
    assert r3.request_goodput == pytest.approx(r3.request_throughput, rel=1e-12)


# ---- KV moved per prefilled token, and the link ---------------------------------------------------------


def test_kv_transfer_bytes_per_prefilled_token_are_kv_bytes_per_token():
    # 2 (k, v) x 80 layers x 8 KV heads x 128 head_dim x 2 bytes = 327,680 B per token (llama3-70b, fp16)
    assert kv_bytes_per_token(LLAMA3_70B, "fp16") == 2 * 80 * 8 * 128 * 2 == 327_680
    trace = synthetic_trace(40, (200, 3000), (1, 50), rate_per_s=2.0, seed=4)
    prompt = int(trace.prompt_len.sum())
    for system in ("homogeneous", "lamina"):
        pooled = simulate(_config(system), trace, arrival="trace")
        assert pooled.prefill_kv_bytes / prompt == 327_680
    colocated = simulate(_config("lamina", pool=None), trace, arrival="trace")  # to the attention pool
    assert colocated.prefill_kv_bytes / colocated.prefill_tokens == 327_680
    local = simulate(_config("homogeneous", pool=None), trace, arrival="trace")  # KV stays on the devices
    assert local.prefill_kv_bytes == 0.0


def test_pool_kv_counts_against_the_link():
    """Homogeneous decode moves nothing between pools, so the link carries exactly the pool's KV: its mean
    rate x makespan is the prompts' KV bytes; the link's peak rate is at least that mean."""
    trace = synthetic_trace(60, (500, 2000), (2, 40), rate_per_s=4.0, seed=2)
    r = simulate(_config("homogeneous"), trace, arrival="trace")
    sent = float(trace.prompt_len.sum()) * 327_680
    assert r.net_mean_gbps * 1e9 / 8 * r.makespan_s == pytest.approx(sent, rel=1e-9)
    assert r.net_peak_gbps >= r.net_mean_gbps > 0
    without = simulate(_config("homogeneous", pool=None), trace, arrival="trace")
    assert without.net_peak_gbps == 0.0


def test_link_bytes_in_windows_match_a_loop():
    rng = np.random.default_rng(0)
    start = rng.uniform(0, 5, 50)
    end = start + rng.uniform(0.01, 1, 50)
    nbytes = rng.uniform(1e6, 1e9, 50)
    edges = np.sort(rng.uniform(-1, 7, 40))
    ws, we = edges[:-1], edges[1:]
    ref = [
        sum(
            b * max(0.0, min(e, w1) - max(s, w0)) / (e - s)
            for b, s, e in zip(nbytes, start, end, strict=True)
        )
        for w0, w1 in zip(ws, we, strict=True)
    ]
    assert np.allclose(link_bytes_in_windows(nbytes, start, end, ws, we), ref, rtol=1e-9, atol=1e-3)
    whole = link_bytes_in_windows(nbytes, start, end, np.array([-1.0]), np.array([10.0]))
    assert whole[0] == pytest.approx(nbytes.sum(), rel=1e-12)


def test_pool_devices_are_part_of_the_cost():
    trace = synthetic_trace(5, 500, 5)
    with_pool = simulate(_config("homogeneous"), trace)
    without = simulate(_config("homogeneous", pool=None), trace)
    assert with_pool.cost_usd_per_hour == pytest.approx(
        without.cost_usd_per_hour + POOL.cost_usd_per_hour, rel=1e-12
    )
    assert with_pool.prefill_pool == "2xH100" and 0 < with_pool.prefill_pool_busy_fraction <= 1


# ---- names, decode-only -------------------------------------------------------------------------------


def test_latency_names_are_vllms_and_registered():
    names = latency_fields()
    assert "median_ttft_ms" in names and "p99_itl_ms" in names and "p90_e2el_ms" in names
    for name in (
        *names,
        "request_throughput",
        "output_throughput",
        "total_token_throughput",
        "request_goodput",
    ):
        assert name in METRICS
    trace = synthetic_trace(30, (100, 800), (2, 30), rate_per_s=3.0, seed=1)
    r = simulate(_config("lamina"), trace, arrival="trace", ttft_slo_ms=1e4, tpot_slo_ms=1e3)
    metrics = r.row_fields()["metrics"]
    assert {"mean_ttft_ms", "p99_tpot_ms", "median_itl_ms", "request_goodput"} <= set(metrics)
    served_tokens = int(trace.prompt_len.sum() + trace.output_len.sum())
    assert r.total_token_throughput * r.makespan_s == pytest.approx(served_tokens, rel=1e-12)
    assert r.output_throughput == pytest.approx(r.generated_tokens / r.makespan_s, rel=1e-12)


def test_itl_is_the_decode_iteration_time_with_a_pool():
    """One request alone: its ITLs are its decode iterations' durations and the gap from the pool's first
    token to its first decode; TPOT is their mean."""
    r = simulate(_config("homogeneous"), _trace([0.0], 1000, 6), arrival="trace")
    assert r.mean_itl_ms == pytest.approx(r.mean_tpot_ms, rel=1e-12)


def test_reserve_all_leaves_prefill_latencies_empty():
    config = SystemConfig("homogeneous", LLAMA3_70B, parse_mix("4xH100"))
    r = simulate(config, synthetic_trace(20, 500, 10), ttft_slo_ms=100.0)
    assert r.mean_ttft_ms is None and r.p99_e2el_ms is None and r.request_goodput is None
    assert r.mean_tpot_ms > 0 and r.mean_itl_ms > 0 and r.request_throughput > 0


def test_a_pool_too_small_for_the_weights_is_refused():
    from lamina_bench.errors import UserInputError

    config = _config("homogeneous", pool=parse_mix("1xH100"))
    with pytest.raises(UserInputError, match="does not fit on prefill pool 1xH100"):
        prefill_pool(config, iteration_model(config))
    with pytest.raises(UserInputError, match="prefill pool"):
        simulate(config, synthetic_trace(2, 10, 2))


def test_reserve_all_rows_carry_no_serving_metrics():
    """Decode-only rows stay as they were (the committed baseline reproduces)."""
    config = SystemConfig("homogeneous", LLAMA3_70B, parse_mix("4xH100"))
    metrics = simulate(config, synthetic_trace(20, 500, 10)).row_fields()["metrics"]
    assert not set(metrics) & {*latency_fields(), "request_throughput", "request_goodput"}
    assert "tbt_p99_ms" in metrics


# ---- the modeled sweep ---------------------------------------------------------------------------------

_SWEEP = """
[[modeled]]
models = ["llama3.1-8b"]
traces = ["azure-conv"]
requests = 40
homogeneous = ["1xH100"]
systems = ["homogeneous"]
scheduler = "vllm"
arrival = "poisson"
rate_per_s = 2.0
"""


def test_sweep_points_carry_goodput_and_capacity():
    import tomllib

    from lamina_bench.results.row import PointRow
    from lamina_bench.sweep.run import _simulated
    from lamina_bench.sweep.spec import parse_spec

    plain = parse_spec(tomllib.loads(_SWEEP)).points[0]
    served = parse_spec(
        tomllib.loads(
            _SWEEP + 'prefill_pool = "1xH100"\nttft_slo_ms = 2000\ntpot_slo_ms = 100\ncapacity = true\n'
        )
    ).points[0]
    assert plain.point_id != served.point_id and "capacity" not in plain.identity()
    row = _simulated(PointRow(point_id=served.point_id, source="modeled"), served.config)
    assert {"request_goodput", "capacity_req_per_s", "capacity_usd_per_mtok", "p99_ttft_ms"} <= set(
        row.metrics
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        ('ttft_slo_ms = 100\nscheduler = "reserve-all"\n', "need scheduler"),
        ("ttft_slo_ms = -1\n", "must be a positive number"),
        ("capacity = true\nttft_slo_ms = 100\n", "needs ttft_slo_ms and tpot_slo_ms"),
        ('prefill_pool = "1xH100"\n', "does not fit on prefill pool 1xH100"),
    ],
)
def test_sweep_serving_keys_refuse_bad_input(extra, message):
    import tomllib

    from lamina_bench.errors import UserInputError
    from lamina_bench.sweep.spec import parse_spec

    block = _SWEEP.replace('scheduler = "vllm"\n', "") if "scheduler" in extra else _SWEEP
    with pytest.raises(UserInputError, match=message):
        parse_spec(
            tomllib.loads(block.replace("llama3.1-8b", "llama3-70b").replace("1xH100", "4xH100") + extra)
        )


def test_counts_at_or_before_equal_searchsorted_on_sorted_windows():
    """The merge used for a replay's sorted windows against numpy's searchsorted, ties included."""
    from lamina_bench.model.prefill_pool import _count_at_or_before

    rng = np.random.default_rng(0)
    for _ in range(100):
        ts = np.sort(rng.choice(rng.uniform(0, 10, 50), rng.integers(1, 60)))
        t = np.sort(np.concatenate([rng.uniform(-1, 11, rng.integers(0, 400)), ts[:5]]))
        assert np.array_equal(_count_at_or_before(ts, t), np.searchsorted(ts, t, side="right"))
