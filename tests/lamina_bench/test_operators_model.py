"""Operator model, device level: the committed calibration, constants of uncalibrated GPUs (derived),
provenance of every constant, and DeviceModel / the simulator on the calibrated model."""

import numpy as np
import pytest

from lamina_bench.catalog.devices import get_device, parse_mix
from lamina_bench.catalog.models import get_model
from lamina_bench.catalog.workloads import synthetic_trace
from lamina_bench.errors import UserInputError
from lamina_bench.model.iteration import iteration_model
from lamina_bench.model.operators import DeviceModel, device_model
from lamina_bench.model.ops.calibration import (
    FAMILIES,
    calibration_from_dict,
    calibration_to_dict,
    chain,
    gpu_constants,
    load_calibration,
)
from lamina_bench.model.ops.constants import TAGS, fixed_constants
from lamina_bench.model.ops.device import gpu_model
from lamina_bench.model.ops.layer import LayerShape
from lamina_bench.model.simulator import simulate
from lamina_bench.model.system import SystemConfig
from tests.lamina_bench.test_perfmodel import make_profile

CAL = load_calibration()
LLAMA3_70B = get_model("llama3-70b")


def test_committed_calibration_has_every_family_with_provenance():
    assert CAL is not None
    for gpu in ("H100", "A100-80G"):
        assert set(CAL.gpus[gpu]) == set(FAMILIES) - ({"p2p"} if gpu != "H100" else set())
    for families in CAL.gpus.values():
        for consts in families.values():
            for name, c in consts.items():
                assert c.date and "validation" not in c.source  # only calibration files are named
                if c.tag == "measured-fit":
                    assert c.source.startswith("fitted on ")
                else:  # an L2 rate the GPU's rows cannot pin: its parent's, named
                    assert (
                        name == "l2_bw_per_sm"
                        and c.tag == "derived"
                        and "'s measured-fit constant" in c.source
                    )
    for c in fixed_constants().values():
        assert c.tag in TAGS and c.source and c.date
    assert calibration_from_dict(calibration_to_dict(CAL)) == CAL


def test_uncalibrated_gpus_derive_their_constants():
    assert chain("L40S") == ["L40S", "A40", "A100-80G", "H100"]
    h200 = gpu_constants("H200", CAL)
    assert h200.derived and set(h200.origin.values()) == {"H100"}
    gemm = h200.constants["gemm"]
    assert all(c.tag == "derived" and "H100" in c.source for c in gemm.values())
    ratio = 4.8e12 / 3.35e12  # bytes in flight scale with the datasheet bandwidth
    assert gemm["ramp_bytes"].value == pytest.approx(CAL.gpus["H100"]["gemm"]["ramp_bytes"].value * ratio)
    assert gemm["t_fixed_s"].value == CAL.gpus["H100"]["gemm"]["t_fixed_s"].value
    a40 = gpu_constants("A40", CAL)  # own dense-layer constants, the rest from the A100 / H100
    assert (
        a40.origin["gemm"] == "A40" and a40.origin["attention"] == "A100-80G" and a40.origin["p2p"] == "H100"
    )
    assert not gpu_constants("H100", CAL).derived


def test_derived_gpu_scales_with_its_datasheet():
    """The same memory-bound GEMV on H200 (4.8 TB/s) is faster than on H100 (3.35 TB/s) by about the ratio."""
    h100, h200 = gpu_model(get_device("H100"), CAL), gpu_model(get_device("H200"), CAL)
    t100, t200 = float(h100.gemm(1, 16384, 16384)), float(h200.gemm(1, 16384, 16384))
    assert 1.3 < t100 / t200 < 4.8 / 3.35 + 0.01


def test_device_model_uses_the_operator_model_where_no_profile_exists():
    ops = gpu_model(get_device("H100"), CAL)
    dm = DeviceModel(get_device("H100"), None, ops)
    dense = dm.dense_layer(LLAMA3_70B, "bf16", [1, 64], tp=4)
    assert dense.source == "modeled" and dense.profile == ops.name
    np.testing.assert_allclose(dense.time_s, ops.dense_layer(LayerShape.of(LLAMA3_70B), [1, 64], 4, "bf16"))
    attn = dm.attention_layer(LLAMA3_70B, "bf16", 8, 8 * 1000, kv_fraction=0.25)
    np.testing.assert_allclose(attn.time_s, ops.attention(8, 1000, 16, 2, 128, "bf16"))
    assert float(dm.allreduce(1e6, 1).time_s) == 0.0 and float(dm.allreduce(1e6, 4).time_s) > 0
    latency, bandwidth, _ = dm.nic()
    assert (latency, bandwidth) == (pytest.approx(16.5e-6), pytest.approx(45.7e9))
    assert (
        DeviceModel(get_device("H200"), None, gpu_model(get_device("H200"), CAL))
        .head(LLAMA3_70B, "bf16", 1)
        .source
        == "derived"
    )
    with pytest.raises(UserInputError, match="fp16/bf16"):
        dm.dense_layer(LLAMA3_70B, "fp32", 1)


def test_a_measured_profile_takes_precedence(tmp_path):
    from lamina_bench.model.profiles import write_profile

    prof = make_profile(device="H100", backend="cuda")
    write_profile(prof, tmp_path / "H100-cuda.json")
    dm = device_model(get_device("H100"), profile_dir=tmp_path, operators="calibrated")
    assert dm.profile == prof and dm.profile_name == prof.name
    assert device_model(get_device("H20"), profile_dir=tmp_path).ops is not None  # calibrated by default
    assert device_model(get_device("H20"), profile_dir=tmp_path, operators="roofline").ops is None
    with pytest.raises(UserInputError, match="unknown operator model"):
        device_model(get_device("H20"), operators="magic")


def test_simulator_runs_on_the_calibrated_model():
    trace = synthetic_trace(40, 512, 64, seed=1)
    for config in (
        SystemConfig("homogeneous", LLAMA3_70B, parse_mix("4xH100"), dtype="bf16"),
        SystemConfig("lamina", LLAMA3_70B, parse_mix("2xH100"), parse_mix("4xH20"), dtype="bf16"),
    ):
        model = iteration_model(config, operators="calibrated")
        result = simulate(config, trace, model=model)
        assert result.generated_tokens == int(trace.output_len.sum())
        assert 5 < result.tbt_mean_ms < 500 and result.profile.startswith("opmodel")
