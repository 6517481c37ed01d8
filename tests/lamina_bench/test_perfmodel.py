"""Per-operator time model: hand-worked numbers, the memory model, and measured profiles."""

import dataclasses
import json

import numpy as np
import pytest

from lamina_bench.catalog.devices import DeviceMix, get_device, parse_mix
from lamina_bench.catalog.models import ModelSpec, get_model, net_bytes_per_token_per_layer
from lamina_bench.errors import UserInputError
from lamina_bench.model.operators import DeviceModel, device_model, nonneg_fit
from lamina_bench.model.profiles import (
    PROFILE_FORMAT,
    AllReducePoint,
    AttentionPoint,
    DensePoint,
    Profile,
    TransferPoint,
    find_profile,
    load_profile,
    profile_to_dict,
    write_profile,
)
from lamina_bench.model.roofline import (
    NIC_LATENCY_S,
    attention_layer_bytes,
    dense_layer_bytes,
    dense_layer_flops,
    link_time_s,
    min_link_bandwidth_bytes_per_s,
)
from lamina_bench.model.system import SystemConfig, memory_plan

LLAMA3_70B = get_model("llama3-70b")
H100 = get_device("H100")
H20 = get_device("H20")

TINY = ModelSpec(
    "tiny",
    "llama",
    num_layers=2,
    hidden_size=64,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    intermediate_size=128,
    vocab_size=256,
    max_position=512,
    mlp="swiglu",
    tie_embeddings=False,
    qkv_bias=False,
    source="test",
)


# ---- hand-worked: Llama-3-70B on 4xH100, fp16 --------------------------------------------------------
# Per layer: q, o 8192*8192 = 67,108,864 each; k, v 8192*1024 = 8,388,608 each; SwiGLU 3*8192*28672 =
# 704,643,072; two RMSNorms 2*8192 -> 855,654,400. 80 layers = 68,452,352,000; embeddings and lm_head
# 128256*8192 = 1,050,673,152 each; final norm 8192 -> 70,553,706,496 parameters, 141,107,412,992 B.
WEIGHTS_70B = 141_107_412_992
# KV per token: 2 (k, v) * 80 layers * 8 heads * 128 * 2 B = 327,680 B.
KV_PER_TOKEN_70B = 327_680


def test_llama3_70b_on_4xh100_memory_by_hand():
    plan = memory_plan(SystemConfig("homogeneous", LLAMA3_70B, parse_mix("4xH100")))
    pool = plan.compute
    assert pool.weight_bytes_per_device == WEIGHTS_70B / 4 == 35_276_853_248
    assert pool.usable_bytes_per_device == pytest.approx(72e9)  # 80 GB minus the 10% workspace
    # (72e9 - 35,276,853,248) B per device / (327,680 B / 4 devices) = 448,280.6 tokens
    assert plan.kv_capacity_tokens == 448_280
    assert pool.max_batch_at_context(2048) == 218  # 448,280 // 2048
    assert pool.max_batch_at_context(8192) == 54


def test_lamina_memory_by_hand():
    plan = memory_plan(SystemConfig("lamina", LLAMA3_70B, parse_mix("2xH100"), parse_mix("4xH20")))
    assert plan.compute.weight_bytes_per_device == WEIGHTS_70B / 2
    assert plan.compute.kv_capacity_tokens == 0  # the compute pool holds no KV
    # 4 x 96 GB x 0.9 = 345.6 GB / 327,680 B = 1,054,687.5 tokens
    assert plan.kv_capacity_tokens == 1_054_687


def test_weights_that_do_not_fit_name_model_mix_and_bytes():
    with pytest.raises(
        UserInputError, match=r"llama3-70b does not fit on 1xH100: weights need 141\.1 GB.*72\.0 GB"
    ):
        memory_plan(SystemConfig("homogeneous", LLAMA3_70B, parse_mix("1xH100")))
    with pytest.raises(UserInputError, match="2 replicas of 1"):  # rotational n=3 needs 2 replicas
        memory_plan(
            SystemConfig("lamina", LLAMA3_70B, parse_mix("2xH100"), parse_mix("4xH20"), pipeline_batches=3)
        )


def test_link_bytes_per_iteration_by_hand():
    # (2 + 2/G) * e * d = (2 + 2/8) * 2 * 8192 = 36,864 B per token per layer; x 80 layers x batch 256
    assert net_bytes_per_token_per_layer(LLAMA3_70B, "fp16") == 36_864
    assert 36_864 * 80 * 256 == 754_974_720


def test_min_link_bandwidth_formula_by_hand():
    # 754,974,720 B per iteration must move within 10% of MTIME + ATIME = 50 ms -> 150.99 GB/s
    bw = min_link_bandwidth_bytes_per_s(LLAMA3_70B, "fp16", 256, 0.030, 0.020, 0.1)
    assert bw == pytest.approx(754_974_720 / 0.005)
    assert bw * 8 / 1e9 == pytest.approx(1207.96, rel=1e-5)  # Gb/s
    with pytest.raises(UserInputError):
        min_link_bandwidth_bytes_per_s(LLAMA3_70B, "fp16", 256, 0.03, 0.02, 0.0)


def test_roofline_dense_layer_by_hand():
    dm = DeviceModel(H100)
    # batch 1, TP 1: 855,638,016 matmul params * 2 B = 1,711,276,032 B of weights; activations
    # (d + d + 2*1024 + 2d + d + 2*28672 + 28672 + d) * 2 = 137,216 * 2 = 274,432 B: memory-bound.
    t = dm.dense_layer(LLAMA3_70B, "fp16", 1).time_s
    assert float(t) == pytest.approx(20e-6 + (1_711_276_032 + 274_432) / (3.35e12 * 0.8))
    # batch 4096 on TP 4: 2 * 855,638,016 * 4096 / 4 flops at 70% of 989 TFLOP/s: compute-bound.
    t = dm.dense_layer(LLAMA3_70B, "fp16", 4096, tp=4).time_s
    assert float(t) == pytest.approx(20e-6 + 2 * 855_638_016 * 4096 / 4 / (989e12 * 0.7))


def test_roofline_attention_and_allreduce_by_hand():
    dm = DeviceModel(H20)
    # 100 sequences x 1000 tokens of KV, one layer: 100,000 * 4096 B (2 * 8 * 128 * 2) + q/out
    # 100 * 2 * 8192 * 2 B, over 4 devices, at 70% of 4.0 TB/s.
    t = dm.attention_layer(LLAMA3_70B, "fp16", 100, 100_000, kv_fraction=0.25).time_s
    assert float(t) == pytest.approx(5e-6 + (100_000 * 4096 + 100 * 32_768) / 4 / (4.0e12 * 0.7))
    # ring all-reduce of 1 MB over 4 H100: 6 steps, 2*3/4 MB per link at 80% of 450 GB/s
    t = DeviceModel(H100).allreduce(1e6, 4).time_s
    assert float(t) == pytest.approx(6 * 2e-6 + 1.5e6 / (450e9 * 0.8))
    assert float(DeviceModel(H100).allreduce(1e6, 1).time_s) == 0.0


def test_link_time_and_nic():
    assert link_time_s(1e6, 10e-6, 50e9) == pytest.approx(10e-6 + 20e-6)
    latency, bw, source = DeviceModel(H100).nic()
    assert (latency, source) == (NIC_LATENCY_S, "modeled")
    assert bw == pytest.approx(400e9 / 8 * 0.9)


def test_roofline_refuses_fp32_and_devices_without_specs():
    with pytest.raises(UserInputError, match="fp16/bf16"):
        DeviceModel(H100).dense_layer(LLAMA3_70B, "fp32", 1)
    with pytest.raises(UserInputError, match="device CPU has no mem_bandwidth_bytes_per_s"):
        DeviceModel(get_device("CPU")).dense_layer(LLAMA3_70B, "fp16", 1)


# ---- profiles ---------------------------------------------------------------------------------------

# A tiny synthetic "measurement": times generated by a known law so that fits can be checked exactly.
S_PER_BYTE, S_PER_FLOP = 1 / 20e9, 1 / 100e9  # dense: 20 GB/s, 100 GFLOP/s
A0_S, A_PER_SEQ_S, A_PER_BYTE = 10e-6, 2e-6, 1 / 10e9  # attention


def _dense_law(spec, batch, tp=1):
    return S_PER_BYTE * dense_layer_bytes(spec, "fp32", batch, tp) + S_PER_FLOP * dense_layer_flops(
        spec, batch, tp
    )


def _attention_law(spec, batch, ctx):
    return A0_S + A_PER_SEQ_S * batch + A_PER_BYTE * attention_layer_bytes(spec, "fp32", batch, batch * ctx)


def make_profile(device="cpu", backend="cpu", spec=TINY) -> Profile:
    dense = tuple(DensePoint(b, float(_dense_law(spec, b))) for b in (1, 4, 16, 64))
    attention = tuple(
        AttentionPoint(b, c, float(_attention_law(spec, b, c))) for b in (1, 8, 32) for c in (64, 512)
    )
    return Profile(
        device=device,
        backend=backend,
        date="2025-01-01",
        versions={"torch": "2.13.0"},
        dtype="fp32",
        tp=1,
        model=spec,
        dense=dense,
        attention=attention,
        head=(DensePoint(1, 50e-6), DensePoint(64, 90e-6)),
        link=(TransferPoint(1000, 20e-6 + 1000 / 1e9), TransferPoint(1_000_000, 20e-6 + 1e6 / 1e9)),
        allreduce=(
            AllReducePoint(4096, 2, 2 * 15e-6 + 4096 / 2e9),
            AllReducePoint(1 << 20, 2, 2 * 15e-6 + (1 << 20) / 2e9),
        ),
        iteration_overhead_s=1e-4,
    )


def test_profile_round_trip(tmp_path):
    prof = make_profile()
    path = write_profile(prof, tmp_path / "profiles" / f"{prof.name}.json")
    assert path.name == "cpu-cpu.json"
    assert json.loads(path.read_text())["format"] == PROFILE_FORMAT
    assert load_profile(path) == prof
    assert find_profile("cpu", "cpu", tmp_path / "profiles") == prof
    assert find_profile("H100", "cuda", tmp_path / "profiles") is None


def test_profile_same_shape_interpolates_measured_points():
    dm = DeviceModel(None, make_profile())
    for point in make_profile().dense:
        pred = dm.dense_layer(TINY, "fp32", point.batch)
        assert float(pred.time_s) == pytest.approx(point.time_s)
        assert (pred.source, pred.profile) == ("measured", "cpu-cpu")
    # between points: linear in batch, as the law is
    assert float(dm.dense_layer(TINY, "fp32", 10).time_s) == pytest.approx(_dense_law(TINY, 10))
    head = dm.head(TINY, "fp32", np.array([1, 64, 128])).time_s
    np.testing.assert_allclose(head, [50e-6, 90e-6, 90e-6 + 64 * 40e-6 / 63])  # extrapolated by the end slope


def test_profile_fit_transfers_to_another_shape():
    other = dataclasses.replace(
        TINY, name="wider", hidden_size=128, num_heads=8, num_kv_heads=4, intermediate_size=512
    )
    dm = DeviceModel(None, make_profile())
    batch = np.array([1, 7, 200])
    pred = dm.dense_layer(other, "fp32", batch, tp=2)
    np.testing.assert_allclose(pred.time_s, _dense_law(other, batch, tp=2), rtol=1e-6)
    assert pred.source == "modeled"
    att = dm.attention_layer(other, "fp32", 5, 5 * 300)
    assert float(att.time_s) == pytest.approx(_attention_law(other, 5, 300), rel=1e-6)
    assert att.source == "modeled"
    assert dm.attention_layer(TINY, "fp32", 5, 5 * 300).source == "measured"


def test_profile_link_and_allreduce_fits():
    dm = DeviceModel(None, make_profile())
    latency, bw, source = dm.nic()
    assert (latency, bw, source) == (pytest.approx(20e-6), pytest.approx(1e9), "modeled")
    t = dm.allreduce(1e5, 2)
    assert float(t.time_s) == pytest.approx(2 * 15e-6 + 1e5 / 2e9)
    assert dm.iteration_overhead_s == 1e-4


def test_profile_of_one_device_applied_to_another_is_derived():
    prof = make_profile(device="H100", backend="cuda", spec=LLAMA3_70B)
    prof = dataclasses.replace(prof, dtype="fp16")
    own = DeviceModel(H100, prof)
    h20 = DeviceModel(H20, prof)
    assert h20.derived and not own.derived
    a_own = own.attention_layer(LLAMA3_70B, "fp16", 64, 64 * 2000)
    a_h20 = h20.attention_layer(LLAMA3_70B, "fp16", 64, 64 * 2000)
    assert a_h20.source == "derived" and a_own.source == "measured"
    # the bandwidth term scales by 3.35 / 4.0 TB/s; the fixed and per-sequence terms stay
    fixed = A0_S + A_PER_SEQ_S * 64
    assert float(a_h20.time_s) - fixed == pytest.approx((float(a_own.time_s) - fixed) * 3.35 / 4.0)
    d_h20 = h20.dense_layer(LLAMA3_70B, "fp16", 4096)
    assert d_h20.source == "derived"
    assert h20.iteration_overhead_s == 0.0  # another machine's engine overhead is not carried over


def test_device_model_uses_stored_profile(tmp_path):
    prof = dataclasses.replace(make_profile(device="H100", backend="cuda", spec=LLAMA3_70B), dtype="fp16")
    write_profile(prof, tmp_path / "H100-cuda.json")
    assert device_model(H100, profile_dir=tmp_path).profile == prof
    assert device_model(H20, profile_dir=tmp_path).profile is None  # roofline
    assert device_model(H20, profile_dir=tmp_path, derive_from=prof).derived


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"format": "other/9"}, "format"),
        ({"dtype": "fp64"}, "unknown dtype"),
        ({"dense": [{"batch": 1, "time_s": 1e-3}]}, "at least 2 dense"),
        ({"dense": [{"batch": 1, "time_s": -1.0}, {"batch": 2, "time_s": 1.0}]}, "positive"),
        ({"attention": [{"batch": 1}]}, "malformed"),
    ],
)
def test_bad_profile_files_are_one_line_errors(tmp_path, edit, message):
    data = profile_to_dict(make_profile()) | edit
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserInputError, match=message):
        load_profile(path)


def test_nonneg_fit_recovers_coefficients_and_never_goes_negative():
    rng = np.random.default_rng(0)
    x = np.stack([np.ones(20), rng.uniform(1, 100, 20), rng.uniform(1, 1000, 20)], axis=1)
    coef = np.array([2.0, 0.5, 0.01])
    np.testing.assert_allclose(nonneg_fit(x, x @ coef), coef, rtol=1e-9)
    # data that a negative slope would fit best: the fit clamps it to 0
    y = 10.0 - 0.01 * x[:, 1]
    assert np.all(nonneg_fit(x[:, :2], y) >= 0)


def test_tp_mix_must_divide_heads():
    with pytest.raises(UserInputError, match="multiple of 8"):
        SystemConfig("homogeneous", get_model("llama-33b"), DeviceMix(8, H100))  # 52 heads
