"""MoE and MLA operator arithmetic against numbers worked by hand (model/ops/moe.py, model/moe_ops.py)."""

import math

import numpy as np
import pytest

from lamina_bench.catalog.devices import get_device
from lamina_bench.catalog.models import get_model
from lamina_bench.model.moe_ops import all_to_all_s, attention_core_s, block_time_s, expert_block
from lamina_bench.model.operators import DeviceModel
from lamina_bench.model.ops.calibration import gpu_constants, load_calibration
from lamina_bench.model.ops.gemm import gemm_time_s
from lamina_bench.model.ops.hardware import hardware
from lamina_bench.model.ops.moe import (
    active_experts,
    device_active_experts,
    device_load,
    expert_bytes_moved,
    expert_flops,
    grouped_gemm_time_s,
    mla_attention_bytes,
    mla_attention_flops,
    tokens_per_expert,
)


def test_tokens_per_expert_under_uniform_routing():
    # Mixtral: E = 8, k = 2. B = 4 tokens -> 8 copies, 1 per expert; an expert is idle with P = (6/8)^4.
    assert tokens_per_expert(4, 8, 2) == pytest.approx(1.0)
    assert active_experts(4, 8, 2) == pytest.approx(8 * (1 - 0.31640625))  # 5.46875
    # Qwen3-30B-A3B: E = 128, k = 8, B = 16 -> 128 copies, 1 per expert on average
    assert tokens_per_expert(16, 128, 8) == pytest.approx(1.0)
    # a single device holding 2 experts that gets 3 copies: 2 (1 - (1/2)^3) = 1.75 active
    assert device_active_experts(3, 2) == pytest.approx(1.75)


def test_most_loaded_expert_device():
    # B = 64 tokens, E = 8, k = 2 over N = 4 devices: mean 64*2/4 = 32 copies per device;
    # variance 64*2*(1/4)(3/4)(6/7) = 20.571; bound 32 + sqrt(20.571) sqrt(2 ln 4) = 39.552
    assert device_load(64, 8, 2, 4) == pytest.approx(32 + math.sqrt(20.5714286) * math.sqrt(2 * math.log(4)))
    assert device_load(64, 8, 2, 4) == pytest.approx(39.552, abs=1e-3)
    # skew 1.5 scales the mean only: 48 + 7.552
    assert device_load(64, 8, 2, 4, skew=1.5) == pytest.approx(55.552, abs=1e-3)
    assert device_load(64, 8, 2, 1) == pytest.approx(128.0)  # one device gets every copy
    # the cap: B = 1 token on 8 devices of 1 expert each gets at most 1 copy per device
    assert device_load(1, 8, 2, 8) <= 1.0


def test_expert_gemm_bytes_of_one_mixtral_layer():
    # B = 4 tokens on one device: 8 copies over 5.46875 active experts of 3 * 4096 * 14336 weights (bf16)
    weights = 5.46875 * 3 * 4096 * 14336 * 2  # 1,926,758,400
    activations = 8 * 2 * (2 * 4096 + 3 * 14336)  # x in and out (d each), gate+up out (2 I), down in (I)
    assert weights + activations == 1_927_577_600
    assert expert_bytes_moved(8, 5.46875, 4096, 14336) == pytest.approx(1_927_577_600)
    assert expert_flops(8, 4096, 14336) == pytest.approx(6 * 4096 * 14336 * 8)


def test_mla_decode_attention_bytes_and_flops():
    # DeepSeek-V3 (H = 128, c = 512, r = 64), bf16: 2 sequences reading 2000 context tokens in one layer
    # latent 2000 * 576, query 2 * 128 * 576, output 2 * 128 * 512, 2 bytes each
    assert mla_attention_bytes(2, 2000, 128, 512, 64, 2) == pytest.approx(2 * (1_152_000 + 147_456 + 131_072))
    assert mla_attention_flops(2000, 128, 512, 64) == pytest.approx(2 * 128 * 1088 * 2000)
    # per decode step, the KV read of those 2000 tokens over all 61 layers: 140,544,000 bytes
    spec = get_model("deepseek-v3")
    assert spec.num_layers * 2000 * spec.mla.cache_width * 2 == 140_544_000


def test_mla_core_roofline_on_h100():
    spec, dev = get_model("deepseek-v3"), get_device("H100")
    dm = DeviceModel(dev)
    t = attention_core_s(dm, spec, "bf16", 2.0, 2000.0, 1.0)
    by_bytes = 2_861_056 / (3.35e12 * 0.70)  # ATTENTION_BW_EFFICIENCY
    by_flops = 557_056_000 / (989e12 * 0.50)  # ATTENTION_FLOPS_EFFICIENCY
    assert float(t) == pytest.approx(5e-6 + max(by_bytes, by_flops))


def test_expert_block_roofline_mixtral_on_h100():
    spec = get_model("mixtral-8x7b")
    gemms, ew = expert_block(spec, 8.0, 5.46875, 2)
    t = block_time_s(DeviceModel(get_device("H100")), gemms, ew, "bf16")
    nbytes = 1_927_577_600 + 2 * 3 * 8 * 14336  # + SiLU-and-mul reads gate, up, writes the product
    assert float(t) == pytest.approx(20e-6 + nbytes / (3.35e12 * 0.80))  # bandwidth-bound at 8 copies


def test_grouped_gemm_of_one_group_is_the_calibrated_gemm():
    cal = load_calibration()
    if cal is None:
        pytest.skip("no committed calibration")
    hw = hardware(get_device("H100"), gpu_constants("H100", cal).sms)
    g = gpu_constants("H100", cal).values("gemm")
    m = np.array([1.0, 16.0, 200.0])
    ref = gemm_time_s(g, hw, m, 3072, 4096, 2)
    assert grouped_gemm_time_s(g, hw, 1.0, m, 3072, 4096, 2) == pytest.approx(ref)
    # 4 groups of the same GEMM: 4x the bytes and tiled flops in one kernel, one fixed cost
    four = grouped_gemm_time_s(g, hw, 4.0, m, 3072, 4096, 2)
    assert np.all(four < 4 * ref) and np.all(four > ref)


def test_all_to_all_roofline():
    dm = DeviceModel(get_device("H100"))
    # 8 ranks, 1 MB each: 7/8 MB leave each rank over 450 GB/s NVLink at 80%, plus 7 steps of 2 us
    assert float(all_to_all_s(dm, 1e6, 8)) == pytest.approx(7 * 2e-6 + 0.875e6 / (450e9 * 0.8))
    assert float(all_to_all_s(dm, 1e6, 1)) == 0.0


def test_attention_block_roofline_mixtral_on_h100():
    from lamina_bench.model.moe_ops import attention_block_elementwise, attention_block_gemms

    spec = get_model("mixtral-8x7b")  # d 4096, 32 q heads, 8 KV heads of 128, 8 experts
    gemms = attention_block_gemms(spec, 4.0, dense_layer=False)
    ew = attention_block_elementwise(spec, 4.0, False, 2)
    # bytes, 4 tokens, bf16: qkv 2(4*4096 + 6144*4096 + 4*6144) = 50,413,568; o 33,619,968;
    # router 2(4*4096 + 8*4096 + 4*8) = 98,368; two norms 147,456; residual add 98,304
    nbytes = 50_413_568 + 33_619_968 + 98_368 + 147_456 + 98_304
    assert nbytes == 84_377_664
    t = block_time_s(DeviceModel(get_device("H100")), gemms, ew, "bf16")
    flops = 2 * 4 * (6144 * 4096 + 4096 * 4096 + 8 * 4096)  # 335,806,464: far below the bandwidth term
    assert float(t) == pytest.approx(20e-6 + max(nbytes / (3.35e12 * 0.8), flops / (989e12 * 0.7)))


def test_link_bytes_per_token_by_hand():
    from lamina_bench.model.moe_iteration import moe_link_bytes_per_token

    ds = get_model("deepseek-v3")
    # Lamina with MLA: latent query H (c + r), new latent c + r out, latent output H c back, bf16, 61 layers
    assert moe_link_bytes_per_token(ds, "lamina", "bf16") == 2 * (128 * 576 + 576 + 128 * 512) * 61
    # AFD: k = 8 copies of d = 7168 each way over the 58 MoE layers (the 3 dense layers move nothing)
    assert moe_link_bytes_per_token(ds, "afd", "bf16") == 2 * 8 * 7168 * 2 * 58
    assert moe_link_bytes_per_token(ds, "homogeneous", "bf16") == 0.0
