"""The vllm scheduler through the simulator: prefill and CPU time by hand, vLLM's KV budget by hand, the
closed loop (Little's law), the throughput basis of each arrival mode, bad input, the sweep key."""

import tomllib

import numpy as np
import pytest

from lamina_bench import cli
from lamina_bench.catalog.devices import get_device, parse_mix
from lamina_bench.catalog.models import get_model
from lamina_bench.catalog.workloads import synthetic_trace
from lamina_bench.errors import UserInputError
from lamina_bench.model.iteration import iteration_model
from lamina_bench.model.memory import GIB
from lamina_bench.model.paged_replay import paged_replay
from lamina_bench.model.prefill import ServingIterationModel
from lamina_bench.model.scheduler import Scheduler, scheduler_named
from lamina_bench.model.simulator import simulate
from lamina_bench.model.summary import closed_loop_arrivals
from lamina_bench.model.system import SystemConfig, memory_plan
from lamina_bench.sweep.spec import parse_spec
from tests.lamina_bench.test_perfmodel import TINY

VLLM = Scheduler("vllm")
LLAMA3_70B, LLAMA31_8B = get_model("llama3.1-70b"), get_model("llama3.1-8b")


def tiny_serving(system="homogeneous"):
    attention = parse_mix("1xH20") if system == "lamina" else None
    config = SystemConfig(system, TINY, parse_mix("1xH100"), attention, scheduler=VLLM, pipeline_batches=None)
    base = iteration_model(config, operators="roofline")  # the hand-worked figures below are roofline's
    return ServingIterationModel(base, VLLM), base


# ---- iteration time: CPU overhead and prefill, by hand -------------------------------------------------


def test_cpu_overhead_of_a_decode_iteration():
    serving, base = tiny_serving()
    # 0.16 ms per iteration + 2.2 us per scheduled request (model/scheduler.py): 10 decodes
    expected = float(base.time_s(10, 1000)) + 0.16e-3 + 10 * 2.2e-6
    assert float(serving.time_s(10, 1000, 0, 0.0, 0, 0)) == pytest.approx(expected, rel=1e-12)


def test_prefill_attention_of_a_tiny_model_by_hand():
    # TINY: 4 query heads, 2 KV heads, head_dim 16, 2 layers, fp16. A 100-token prompt from scratch
    # attends 100 * 101 / 2 = 5050 (query, key) pairs per head.
    # flops = 4 * 4 heads * 16 * 5050 = 1,292,800; bytes = 2 B * 16 * (2 * 4 * 100 + 2 * 2 * (100 + 5050/128))
    # = 32 * 1357.8125 = 43,450. Roofline on H100: 5 us + max(43,450 / (3.35e12 * 0.7), 1,292,800 /
    # (989e12 * 0.5)) = 5 us + 18.53 ns.
    attention = 5e-6 + max(43_450 / (3.35e12 * 0.7), 1_292_800 / (989e12 * 0.5))
    assert attention == pytest.approx(5.018529e-6, rel=1e-6)
    serving, base = tiny_serving()
    c, L = base.compute, 2
    # no decodes: the 100 rows run the dense layers alone, the head samples 1 token, plus CPU for 1 request
    dense = L * c.dense_layer(TINY, "fp16", 100, 1).time_s + c.head(TINY, "fp16", 1).time_s
    expected = dense + L * attention + 0.16e-3 + 2.2e-6
    assert float(serving.time_s(0, 0, 100, 5050.0, 1, 1)) == pytest.approx(float(expected), rel=1e-9)
    # mixed: 3 decodes over 300 keys and a 50-token chunk after a 20-token prefix (pairs 50*20 + 50*51/2)
    pairs = 50 * 20 + 50 * 51 / 2
    extra_attention = 5e-6 + max(
        2 * 16 * (2 * 4 * 50 + 2 * 2 * (50 + pairs / 128)) / (3.35e12 * 0.7),
        4 * 4 * 16 * pairs / (989e12 * 0.5),
    )
    extra_dense = L * (c.dense_layer(TINY, "fp16", 53, 1).time_s - c.dense_layer(TINY, "fp16", 3, 1).time_s)
    extra_dense += c.head(TINY, "fp16", 4).time_s - c.head(TINY, "fp16", 3).time_s  # the chunk completes
    expected = float(base.time_s(3, 300)) + extra_dense + L * extra_attention + 0.16e-3 + 4 * 2.2e-6
    assert float(serving.time_s(3, 300, 50, pairs, 1, 1)) == pytest.approx(float(expected), rel=1e-9)


def test_lamina_prefill_runs_on_the_compute_pool_and_streams_its_kv():
    serving, base = tiny_serving("lamina")
    c, L = base.compute, 2
    compute = L * c.dense_layer(TINY, "fp16", 100, 1).time_s + c.head(TINY, "fp16", 1).time_s
    compute += L * (5e-6 + max(43_450 / (3.35e12 * 0.7), 1_292_800 / (989e12 * 0.5)))
    # KV of 100 tokens: 100 * 2 (k, v) * 2 layers * 2 KV heads * 16 * 2 B = 25,600 B over min(45, 45) GB/s
    # (400 Gb/s x 0.9 on both sides); latency 10 us; no decodes (their pipeline does not run)
    transfer = 25_600 / (400e9 / 8 * 0.9)
    expected = max(float(compute), transfer) + transfer / L + 10e-6 + 0.16e-3 + 2.2e-6
    assert float(serving.time_s(0, 0, 100, 5050.0, 1, 1)) == pytest.approx(expected, rel=1e-9)


# ---- vLLM's KV budget, by hand -------------------------------------------------------------------------


def test_vllm_kv_budget_by_hand():
    # Llama-3.1-70B on 4xH100 (catalog: 80e9 B): 0.9 x 80e9 = 72e9 B; weights 141,107,412,992 / 4 =
    # 35,276,853,248 B; activation peak 1.26 GiB x (8192 / 8192 tokens) x (8192 / 4096 hidden) = 2.52 GiB;
    # non-torch 3.58 GiB (TP group). KV: 72e9 - 35,276,853,248 - 6.10 GiB = 30,173,321,625.6 B per device;
    # a token's KV (327,680 B) is split over 4 devices: 81,920 B; blocks of 16: 23,020 -> 368,320 tokens.
    plan = memory_plan(SystemConfig("homogeneous", LLAMA3_70B, parse_mix("4xH100"), scheduler=VLLM))
    assert plan.compute.kv_bytes_per_device == pytest.approx(72e9 - 35_276_853_248 - 6.10 * GIB)
    assert plan.kv_capacity_tokens == 368_320
    # Lamina's attention pool (no weights, no forward pass): 4xH20: 0.9 x 96e9 - 1.79 GiB per device,
    # 1/4 of each token: floor(84,478,002,032.64 / (81,920 x 16)) = 64,451 blocks -> 1,031,216 tokens
    plan = memory_plan(
        SystemConfig("lamina", LLAMA3_70B, parse_mix("2xH100"), parse_mix("4xH20"), scheduler=VLLM)
    )
    assert plan.kv_capacity_tokens == 1_031_216
    # its compute pool holds no KV, so its weights may use all of memory: 70.55 GB + 6.10 GiB < 80 GB
    assert (
        plan.compute.kv_capacity_tokens == 0 and plan.compute.weight_bytes_per_device == 141_107_412_992 / 2
    )
    with pytest.raises(UserInputError, match="under vLLM's budget"):
        memory_plan(SystemConfig("homogeneous", LLAMA3_70B, parse_mix("2xH100"), scheduler=VLLM))


# ---- closed loop ---------------------------------------------------------------------------------------


def test_closed_loop_keeps_n_requests_in_the_system():
    """Little's law on the closed loop: during the closed-loop phase exactly N requests are in the system,
    so their time in it adds up to N x the phase's length; and X x W = N in steady state."""
    config = SystemConfig("homogeneous", LLAMA31_8B, parse_mix("1xH100"), scheduler=VLLM)
    serving = ServingIterationModel(iteration_model(config), VLLM)
    n, clients = 400, 16
    trace = synthetic_trace(n, 512, 64)
    capacity = memory_plan(config).kv_capacity_tokens
    rep = paged_replay(trace.prompt_len, trace.output_len, trace.arrival_s, capacity, serving.time_s, VLLM,
                       concurrency=clients)  # fmt: skip
    end = rep.start_s + rep.time_s
    arrival = closed_loop_arrivals(rep, end)
    finish = end[rep.finish_iteration]
    window = arrival.max()  # the last request is sent: every client has been busy until then
    in_window = np.clip(np.minimum(finish, window) - np.minimum(arrival, window), 0, None)
    assert in_window.sum() == pytest.approx(clients * window, rel=1e-9)
    done = finish <= window
    throughput = done.sum() / window
    latency = (finish - arrival)[done].mean()
    assert throughput * latency == pytest.approx(clients, rel=0.05)


def test_throughput_basis_of_each_arrival_mode():
    trace = synthetic_trace(120, (100, 600), (10, 80), seed=2)
    for sched in (Scheduler(), VLLM):
        config = SystemConfig(
            "homogeneous", LLAMA31_8B, parse_mix("1xH100"), scheduler=sched, max_batch_size=16
        )
        results = {
            "saturate": simulate(config, trace),
            "concurrency": simulate(config, trace, arrival="concurrency", concurrency=8),
            "trace": simulate(config, trace, arrival="trace"),
            "poisson": simulate(config, trace, arrival="poisson", rate_per_s=5.0),
        }
        basis = {m: r.throughput_basis for m, r in results.items()}
        assert basis == {"saturate": "saturated phase", "concurrency": "closed-loop phase",
                         "trace": "whole trace", "poisson": "whole trace"}  # fmt: skip
        for mode, r in results.items():
            fields, as_dict = r.row_fields(), r.to_dict()
            assert fields["throughput_basis"] == as_dict["throughput_basis"] == basis[mode]
            headline = r.saturated_throughput_tok_per_s if mode in ("saturate", "concurrency") else None
            headline = headline if headline is not None else r.generated_tokens / r.makespan_s
            assert fields["metrics"]["throughput_tok_per_s"] == as_dict["throughput_tok_per_s"] == headline
            assert as_dict["whole_trace_throughput_tok_per_s"] == pytest.approx(
                r.generated_tokens / r.makespan_s
            )
            assert r.generated_tokens == int(trace.output_len.sum()) and r.requests == len(trace)


def test_closed_loop_phase_throughput_by_hand():
    config = SystemConfig("homogeneous", LLAMA31_8B, parse_mix("1xH100"), scheduler=VLLM)
    serving = ServingIterationModel(iteration_model(config), VLLM)
    trace = synthetic_trace(60, 300, 20)
    rep = paged_replay(trace.prompt_len, trace.output_len, trace.arrival_s, memory_plan(config).kv_capacity_tokens,
                       serving.time_s, VLLM, concurrency=6)  # fmt: skip
    end = int(rep.release_iteration.max()) + 1  # the iteration that may admit the last request
    expected = rep.generated[:end].sum() / rep.time_s[:end].sum()
    result = simulate(config, trace, arrival="concurrency", concurrency=6)
    assert result.saturated_throughput_tok_per_s == pytest.approx(expected, rel=1e-12)
    # reserve-all's closed loop is its saturate replay capped at N (FIFO makes them the same)
    ra = SystemConfig("homogeneous", LLAMA31_8B, parse_mix("1xH100"))
    capped = SystemConfig("homogeneous", LLAMA31_8B, parse_mix("1xH100"), max_batch_size=6)
    assert (
        simulate(ra, trace, arrival="concurrency", concurrency=6).iterations
        == simulate(capped, trace).iterations
    )


def test_vllm_invariants_on_a_real_trace_shape():
    trace = synthetic_trace(300, (100, 3000), (1, 400), rate_per_s=20.0, seed=3)
    for system, attention in (("homogeneous", None), ("lamina", "1xH20")):
        config = SystemConfig(system, LLAMA3_70B, parse_mix("2xH100" if attention else "4xH100"),
                              parse_mix(attention) if attention else None, scheduler=VLLM)  # fmt: skip
        for arrival in ("saturate", "trace"):
            r = simulate(config, trace, arrival=arrival)
            assert r.requests == 300 and r.generated_tokens == int(trace.output_len.sum())
            assert r.kv_peak_tokens <= r.kv_capacity_tokens and r.max_batch_size <= VLLM.max_num_seqs
            assert r.prefill_tokens >= int(trace.prompt_len.sum())  # recomputes add to the prompts
            assert (
                r.median_ttft_ms <= r.p99_ttft_ms and r.mean_tpot_ms > 0 and r.mean_e2el_ms > r.mean_ttft_ms
            )
            assert r.scheduler.startswith("vllm")


# ---- bad input -----------------------------------------------------------------------------------------

_BASE = ["simulate", "--model", "llama3.1-8b", "--system", "homogeneous", "--compute", "1xH100", "--trace",
         "azure-conv", "--requests", "20"]  # fmt: skip


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--scheduler", "fifo"], "unknown scheduler 'fifo'; valid: reserve-all, vllm"),
        (["--arrival", "concurrency", "--concurrency", "0"], "needs --concurrency >= 1, got 0"),
        (["--arrival", "concurrency"], "needs --concurrency >= 1"),
        (["--concurrency", "4"], "--concurrency applies to --arrival concurrency only"),
        (["--scheduler", "vllm", "--max-num-seqs", "0"], "max_num_seqs must be an integer >= 1, got 0"),
        (
            ["--scheduler", "vllm", "--max-num-batched-tokens", "0"],
            "max_num_batched_tokens must be an integer >= 1",
        ),
        (
            ["--scheduler", "vllm", "--max-num-seqs", "512", "--max-num-batched-tokens", "256"],
            "must be >= max_num_seqs",
        ),
        (
            ["--scheduler", "vllm", "--gpu-memory-utilization", "1.5"],
            "gpu_memory_utilization must be in (0, 1]",
        ),
        (
            ["--scheduler", "vllm", "--prefill", "eager"],
            "unknown prefill mode 'eager'; valid: chunked, separate",
        ),
        (["--max-num-seqs", "8"], "max-num-seqs apply to --scheduler vllm only"),
        (["--input-len", "100", "--output-len", "10"], "either --trace or --input-len/--output-len"),
    ],
)
def test_bad_scheduler_input_is_one_line_exit_2(capsys, extra, message):
    assert cli.main(_BASE + extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_fixed_lengths_need_requests(capsys):
    argv = _BASE[:7] + ["--input-len", "100", "--output-len", "10"]
    assert cli.main(argv) == 2
    assert "--input-len, --output-len and --requests" in capsys.readouterr().err
    assert cli.main(argv + ["--requests", "0"]) == 2
    assert "--requests must be >= 1, got 0" in capsys.readouterr().err


def test_scheduler_names_and_knobs():
    assert scheduler_named("reserve-all") == Scheduler() and not Scheduler().paged
    assert scheduler_named("vllm", max_num_seqs=8).max_num_seqs == 8
    with pytest.raises(UserInputError, match="unknown scheduler"):
        Scheduler("sglang")


# ---- sweeps: the `scheduler` key ----------------------------------------------------------------------

_BLOCK = """
[[modeled]]
models = ["llama3.1-8b"]
traces = ["azure-conv"]
requests = 30
homogeneous = ["1xH100"]
systems = ["homogeneous"]
"""


def test_sweep_scheduler_key_changes_the_identity_only_when_not_the_default():
    default = parse_spec(tomllib.loads(_BLOCK)).points[0]
    explicit = parse_spec(tomllib.loads(_BLOCK + 'scheduler = "reserve-all"\n')).points[0]
    vllm = parse_spec(tomllib.loads(_BLOCK + 'scheduler = "vllm"\n')).points[0]
    assert "scheduler" not in default.identity() and default.point_id == explicit.point_id
    assert vllm.identity()["scheduler"] == "vllm" and vllm.point_id != default.point_id
    assert vllm.config.system_config().scheduler.paged
    with pytest.raises(UserInputError, match="unknown scheduler 'fifo'; valid: reserve-all, vllm"):
        parse_spec(tomllib.loads(_BLOCK + 'scheduler = "fifo"\n'))
    with pytest.raises(UserInputError, match="unknown arrival 'concurrency'"):
        parse_spec(tomllib.loads(_BLOCK + 'arrival = "concurrency"\n'))


def test_vllm_simulate_json_through_the_cli(capsys):
    import json

    argv = _BASE[:7] + ["--input-len", "256", "--output-len", "32", "--requests", "64", "--arrival",
                        "concurrency", "--concurrency", "8", "--scheduler", "vllm", "--prices", "paper-2025", "--json"]  # fmt: skip
    assert get_device("H100") is not None
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["throughput_basis"] == "closed-loop phase" and out["concurrency"] == 8
    assert out["scheduler"].startswith("vllm") and out["generated_tokens"] == 64 * 32
    assert out["mean_tpot_ms"] > 0 and out["mean_ttft_ms"] > 0
