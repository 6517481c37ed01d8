"""MoE models in the simulator: homogeneous, Lamina and AFD; search over all three; sweeps; bad input."""

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from lamina_bench.catalog.devices import load_catalog, parse_mix
from lamina_bench.catalog.models import get_model
from lamina_bench.catalog.workloads import synthetic_trace
from lamina_bench.errors import UserInputError
from lamina_bench.model.iteration import iteration_model
from lamina_bench.model.moe_memory import non_routed_bytes
from lamina_bench.model.scheduler import Scheduler
from lamina_bench.model.search import search
from lamina_bench.model.simulator import simulate
from lamina_bench.model.system import SystemConfig, memory_plan

PRICES = "paper-2025"  # prices H100 and H20


def _mix(text):
    return parse_mix(text, load_catalog(prices=PRICES))


def _config(system, model, compute, attention=None, **kw):
    return SystemConfig(system, get_model(model), _mix(compute), _mix(attention) if attention else None, **kw)


def test_afd_dispatch_combine_bytes_in_the_simulation():
    # Qwen3-235B-A22B: k = 8 copies of d = 4096 bf16 each way: 65,536 + 65,536 bytes per token per layer,
    # over its 94 MoE layers 12,320,768 bytes per generated token
    cfg = _config("afd", "qwen3-235b-a22b", "8xH100", "4xH20")
    result = simulate(cfg, synthetic_trace(8, 64, 4))
    assert result.net_bytes_per_token == 131_072 * 94
    assert result.attention == "4xH20" and result.system == "afd"
    assert result.net_peak_gbps > 0 and result.attention_busy_fraction is not None


def test_afd_memory_plan_by_hand():
    spec = get_model("qwen3-235b-a22b")
    plan = memory_plan(_config("afd", "qwen3-235b-a22b", "8xH100", "4xH20"))
    # expert device: 94 layers x 16 experts x 3 * 4096 * 1536 weights x 2 bytes
    assert plan.compute.weight_bytes_per_device == 94 * 16 * 3 * 4096 * 1536 * 2
    assert plan.compute.kv_capacity_tokens == 0
    # attention device: every non-routed weight, KV in the rest of 96 GB x 0.9 (4 KV heads x 128 x 2 x 94 layers)
    kv_per_token = 2 * 94 * 4 * 128 * 2
    free = 96e9 * 0.9 - non_routed_bytes(spec, "fp16")
    assert plan.attention.kv_capacity_tokens == int(4 * free / kv_per_token)


def test_afd_without_overlap_is_the_sum_of_its_stages():
    # m = 1: nothing overlaps, so an iteration is the attention, expert and transfer times one after another
    cfg = _config("afd", "qwen3-30b-a3b", "2xH100", "2xH20", pipeline_batches=1)
    bd = iteration_model(cfg).breakdown(np.array([8.0, 64.0]), np.array([8e3, 64e3]))
    assert bd.time_s == pytest.approx(bd.dense_s + bd.attention_s + bd.network_s)
    # ping-pong (m = 2) overlaps the pools: faster than two micro-batches run one after the other
    bd2 = iteration_model(replace(cfg, pipeline_batches=2)).breakdown(np.array([64.0]), np.array([64e3]))
    assert bd2.time_s[0] < 2 * (bd2.dense_s[0] + bd2.attention_s[0] + bd2.network_s[0])
    # and never faster than the busier pool
    assert bd2.time_s[0] >= max(bd2.compute_busy_s[0], bd2.attention_busy_s[0]) - 1e-12


def test_each_topology_simulates_a_moe_model():
    trace = synthetic_trace(16, 128, 8)
    configs = [
        _config("homogeneous", "qwen3-30b-a3b", "2xH100"),
        _config("lamina", "qwen3-30b-a3b", "1xH100", "2xH20"),
        _config("afd", "qwen3-30b-a3b", "1xH100", "1xH20"),
        _config("homogeneous", "mixtral-8x7b", "2xH100"),
    ]
    for cfg in configs:
        r = simulate(cfg, trace)
        assert r.generated_tokens == 16 * 8 and r.throughput_tok_per_s > 0 and r.tbt_p99_ms > 0
        assert r.cost_usd_per_hour == pytest.approx(
            cfg.compute.cost_usd_per_hour + (cfg.attention.cost_usd_per_hour if cfg.attention else 0.0)
        )
    homog = simulate(configs[0], trace)
    assert homog.net_bytes_per_token == 0.0 and homog.attention is None


def test_routing_skew_slows_the_experts():
    cfg = _config("afd", "qwen3-30b-a3b", "4xH100", "2xH20")
    base = iteration_model(cfg).time_s(256.0, 256e3)
    skewed = iteration_model(replace(cfg, routing_skew=1.5)).time_s(256.0, 256e3)
    assert skewed > base


def test_homogeneous_weights_by_hand():
    # Mixtral-8x7B on 4 devices: 8 KV heads split evenly, so the non-routed weights are tensor parallel
    # (1/4 each); each device holds 2 of the 8 experts of all 32 layers
    spec = get_model("mixtral-8x7b")
    plan = memory_plan(_config("homogeneous", "mixtral-8x7b", "4xH100"))
    experts = 32 * 2 * 3 * 4096 * 14336 * 2
    assert plan.compute.weight_bytes_per_device == non_routed_bytes(spec, "fp16") / 4 + experts
    # Qwen3-30B-A3B on 8 devices: 4 KV heads do not split 8 ways, so attention is data parallel (every device
    # the whole non-routed weights) and each device holds 16 of the 128 experts of all 48 layers
    qwen = get_model("qwen3-30b-a3b")
    plan = memory_plan(_config("homogeneous", "qwen3-30b-a3b", "8xH100"))
    assert (
        plan.compute.weight_bytes_per_device == non_routed_bytes(qwen, "fp16") + 48 * 16 * 3 * 2048 * 768 * 2
    )
    # KV: every device keeps its own sequences, 80 GB x 0.9 less the weights, 2 x 48 x 4 x 128 x 2 bytes a token
    free = 72e9 - plan.compute.weight_bytes_per_device
    assert plan.kv_capacity_tokens == int(8 * free / (2 * 48 * 4 * 128 * 2))


def test_tensor_parallel_attention_block_splits_the_heads():
    from lamina_bench.model.moe_ops import attention_block_gemms

    spec = get_model("mixtral-8x7b")  # 32 q heads, 8 KV heads of 128
    qkv, o, router = attention_block_gemms(spec, 4.0, False, tp=2)
    assert qkv[2] == (16 + 2 * 4) * 128 and o[3] == 16 * 128  # n of fused qkv, k of o: half the heads
    assert router[2] == 8  # the router stays whole


@pytest.mark.parametrize(
    "args, message",
    [
        (("afd", "qwen3-235b-a22b", "2xH100", "4xH20"), "cannot hold qwen3-235b-a22b"),
        (("afd", "mixtral-8x7b", "16xH100", "2xH20"), "more devices than mixtral-8x7b has routed experts"),
        (("afd", "llama2-7b", "1xH100", "1xH20"), "llama2-7b is dense"),
        (("afd", "qwen3-30b-a3b", "1xH100"), "needs an attention pool"),
    ],
)
def test_bad_afd_input(args, message):
    with pytest.raises(UserInputError, match=message):
        memory_plan(_config(*args))


def test_moe_refuses_the_paged_scheduler_and_low_skew():
    with pytest.raises(UserInputError, match="reserve-all"):
        _config("homogeneous", "qwen3-30b-a3b", "1xH100", scheduler=Scheduler("vllm"))
    with pytest.raises(UserInputError, match="routing skew"):
        _config("homogeneous", "qwen3-30b-a3b", "1xH100", routing_skew=0.5)


@pytest.mark.parametrize(
    "experts, message",
    [("2xH100", "cannot hold qwen3-235b-a22b"), ("200xH100", "more devices than")],
)
def test_cli_bad_afd_split_is_one_line_exit_2(experts, message):
    cmd = [sys.executable, "-m", "lamina_bench.cli", "simulate", "--model", "qwen3-235b-a22b", "--system", "afd",
           "--attention", "4xH20", "--experts", experts, "--trace", "azure-conv", "--prices", PRICES]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and not done.stdout


def test_cli_simulate_afd_json():
    cmd = [sys.executable, "-m", "lamina_bench.cli", "simulate", "--model", "qwen3-30b-a3b", "--system", "afd",
           "--attention", "1xH20", "--experts", "2xH100", "--input-len", "64", "--output-len", "4",
           "--requests", "4", "--prices", PRICES, "--json"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert (out["system"], out["compute"], out["attention"]) == ("afd", "2xH100", "1xH20")
    assert out["net_bytes_per_token"] == 2 * 8 * 2048 * 2 * 48  # k d e each way, 48 MoE layers


def test_search_on_a_moe_model_compares_all_three_systems():
    trace = synthetic_trace(60, 256, 16)
    result = search(get_model("qwen3-30b-a3b"), trace, tbt_slo_ms=200, devices=["H100", "H20"], requests=60,
                    simulate_top=2, price_set=PRICES)  # fmt: skip
    systems = {c.config.system for c in result.ranked}
    assert systems == {"homogeneous", "lamina", "afd"}
    assert result.best_afd is not None and result.best_afd.config.system == "afd"
    out = result.to_dict()
    assert out["best_afd"]["system"] == "afd"
    v = result.verdict()
    assert v.afd is not None and v.afd_ratio == pytest.approx(
        v.afd.value("tokens_per_usd") / v.homogeneous.value("tokens_per_usd")
    )
    assert "AFD" in v.answer() and out["verdict"]["afd_tokens_per_usd_ratio"] == pytest.approx(v.afd_ratio)
    # the report's verdict table: two AFD columns, the attention pool first, then the expert pool
    from lamina_bench.report.verdict_section import _AFD_HEADERS, _HEADERS, _line

    line = _line(v, afd=True)
    assert len(line) == len(_HEADERS) + len(_AFD_HEADERS)
    assert line[-2].startswith(f"{v.afd.attention} + {v.afd.compute} m=")


def test_sweep_block_with_afd_mixes():
    from lamina_bench.sweep.modeled import modeled_block, modeled_points

    block = modeled_block(
        {"models": ["qwen3-30b-a3b", "llama2-7b"], "systems": ["homogeneous", "afd"], "prices": PRICES,
         "homogeneous": ["1xH100"], "afd_attention": ["H20"], "afd_experts": ["H100"],
         "attention_counts": [1], "expert_counts": [1, 2], "afd_pipeline_batches": [2]},
        "spec.toml [[modeled]] 1",
    )  # fmt: skip
    block["_where"] = "spec.toml [[modeled]] 1"
    points, skipped = modeled_points(block)
    afd = [p for p in points if p.config.system == "afd"]
    assert {p.config.compute for p in afd} == {"1xH100", "2xH100"} and {p.config.model for p in afd} == {
        "qwen3-30b-a3b"
    }
    assert skipped == 2  # the dense model's two AFD grid mixes
    assert afd[0].config.system_config().batches == 2


def test_routing_skew_is_for_moe_models_only():
    with pytest.raises(UserInputError, match="routing skew applies to mixture-of-experts"):
        _config("homogeneous", "llama2-7b", "1xH100", routing_skew=1.2)
