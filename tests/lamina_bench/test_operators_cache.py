"""L2 residency, clock-scaled derived constants and the vLLM all-reduce floor, each against numbers worked
by hand; the reuse each validation file declares; the L2 rate recovered from synthetic rows."""

import numpy as np
import pytest

from lamina_bench.catalog.device_table import BUILTIN
from lamina_bench.catalog.devices import get_device
from lamina_bench.errors import UserInputError
from lamina_bench.model.ops.attention import attention_bytes, attention_time_s
from lamina_bench.model.ops.cache import l2_hit_share, streaming_time_s, working_set
from lamina_bench.model.ops.calibration import clock_ratio, gpu_constants, load_calibration
from lamina_bench.model.ops.collectives import vllm_allreduce_s
from lamina_bench.model.ops.constants import Constant
from lamina_bench.model.ops.device import gpu_model
from lamina_bench.model.ops.gemm import gemm_bytes, gemm_time_s
from lamina_bench.model.ops.hardware import Hardware, boost_clock, hardware, l2_size
from lamina_bench.model.ops.layer import LayerShape, layer_bytes
from lamina_bench.validate.files import load_files, read_file
from lamina_bench.validate.fit import fit_gemm

CAL = load_calibration()
MB = 2**20


def hw(l2_bytes=40 * MB, mem_bw=1e12, sms=100) -> Hardware:
    return Hardware("test", mem_bw, 1e30, 100e9, "nvlink", 50e9, sms, "test", l2_bytes, "test")


# ---- the hit share and the streaming time --------------------------------------------------------------


def test_hit_share_is_a_cliff_at_the_l2_size():
    c = 40 * MB
    assert float(l2_hit_share(c, c)) == 0.5
    assert float(l2_hit_share(c / 2, c)) == pytest.approx(1 / (1 + 2.0**-10))  # 0.99902
    assert float(l2_hit_share(2 * c, c)) == pytest.approx(1 / (1 + 2.0**10))  # 0.00098
    assert float(l2_hit_share(np.inf, c)) == 0.0  # no reuse
    assert float(l2_hit_share(None, c)) == 0.0 and float(l2_hit_share(c, None)) == 0.0  # serving; no L2 size
    assert working_set(1e6, 0) is None and float(working_set(1e6, 6)) == 6e6


def test_streaming_time_mixes_dram_and_l2_and_a_hit_is_never_slower():
    # 1 MB, half from the L2 at 4 TB/s, half from DRAM at 1 TB/s: 0.5 us + 0.125 us
    assert float(streaming_time_s(1e6, 0.5, 1e12, 4e12)) == pytest.approx(0.625e-6)
    # an L2 rate below the DRAM rate (a slower parent's, derived): hits go at the DRAM rate
    assert float(streaming_time_s(1e6, 0.5, 1e12, 0.5e12)) == pytest.approx(1e-6)


def test_gemm_reads_a_resident_working_set_at_the_l2_rate():
    g = {"t_fixed_s": 2e-6, "eta_mem": 0.8, "ramp_bytes": 0.0, "eta_cmp": 1.0, "q": 1.0, "l2_bw_per_sm": 30e9}
    nbytes = float(gemm_bytes(1, 1024, 1024))  # 2,101,248 B
    cold = 2e-6 + nbytes / 0.8e12
    assert float(gemm_time_s(g, hw(), 1, 1024, 1024)) == pytest.approx(cold)
    hit = 1 / (1 + (6 * nbytes / (40 * MB)) ** 10)  # six copies cycled: 12.6 MB of a 41.9 MB L2
    warm = 2e-6 + nbytes * (1 - hit) / 0.8e12 + nbytes * hit / (100 * 30e9)
    assert float(gemm_time_s(g, hw(), 1, 1024, 1024, ws_bytes=6 * nbytes)) == pytest.approx(warm)
    assert warm - 2e-6 < 0.3 * (cold - 2e-6)  # 3 TB/s of L2 (100 SMs x 30 GB/s) against 0.8 TB/s


def test_attention_reads_replayed_kv_at_the_l2_rate():
    a = {"t_fixed_s": 0.0, "t_item_s": 0.0, "t_wave_s": 0.0, "eta": 1.0, "q": 1.0, "chunk_tokens": 64,
         "ctas_per_sm": 1, "l2_bw_per_sm": 40e9}  # fmt: skip
    # 200 sequences x 4 KV heads = 800 CTAs over 100 slots: 8 full waves, fill 1
    nbytes = float(attention_bytes(200, 256, 32, 4, 128))  # 200*2*128*(2*256*4 + 2*32) = 108,134,400 B
    assert nbytes == 108_134_400
    args = (200, 256, 32, 4, 128)
    assert float(attention_time_s(a, hw(l2_bytes=None), *args, ws_bytes=nbytes)) == pytest.approx(
        nbytes / 1e12
    )
    big = hw(l2_bytes=1e12)  # fits easily: hit = 1 / (1 + 1e-40) -> every byte at 100 SMs x 40 GB/s
    assert float(attention_time_s(a, big, *args, ws_bytes=nbytes)) == pytest.approx(nbytes / 4e12)


def test_layer_working_set_is_the_bytes_of_one_pass():
    shape = LayerShape(hidden=8, intermediate=16, heads=2, kv_heads=1, head_dim=4)
    # GEMMs (e = 2, T = 1): qkv 2(8 + 16*8 + 16) = 304; o 2(8 + 8*8 + 8) = 160; up 2(8 + 32*8 + 32) = 592;
    # down 2(16 + 8*16 + 8) = 304. Elementwise: 2 norms 2(2*8 + 8) = 48 each; rope 2*2*12 = 48;
    # act 2*3*16 = 96; add 2*3*8 = 48. Total 1,648
    assert float(layer_bytes(shape, 1)) == 304 + 160 + 592 + 304 + 2 * 48 + 48 + 96 + 48


# ---- reuse of the validation files ----------------------------------------------------------------------


def test_each_file_declares_how_its_benchmark_reuses_data(tmp_path):
    reuse = {f.id: f.reuse for f in load_files()}
    assert reuse["aic-h100-vllm0240-gemm-bf16"] == 6  # six weight copies back to back
    assert reuse["aic-l40s-vllm0240-fa2-decode-attn"] == 1  # one graph replayed on the same KV
    assert reuse["vidur-h100-llama2-7b-mlp"] == 1  # the same layer repeated
    assert reuse["aic-h100-nccltests-allreduce"] == reuse["vidur-a100-dgx-send-recv"] == 0
    text = (
        'id = "aic-h100-test-gemm"\nkind = "gemm"\nsplit = "validation"\ngpu = "H100"\nsource = "test"\n'
        "reuse_copies = {}\n[[rows]]\nm = 1\nn = 1024\nk = 1024\ntime_us = 4.0\n"
    )
    path = tmp_path / "aic-h100-test-gemm.toml"
    path.write_text(text.format(3))
    assert read_file(path).reuse == 3
    path.write_text(text.format(-1))
    with pytest.raises(UserInputError, match="reuse_copies must be a whole number >= 0"):
        read_file(path)


# ---- sources and the committed constants ----------------------------------------------------------------


def test_l2_sizes_and_clocks_are_sourced():
    for row in BUILTIN:
        if "l2_bytes" in row:
            assert 4 * MB <= row["l2_bytes"] <= 256 * MB and row["l2_bytes_src"]
        if "boost_clock_hz" in row:
            assert 1e9 <= row["boost_clock_hz"] <= 3e9 and row["boost_clock_hz_src"]
    assert l2_size("L40S")[0] == 96 * MB and l2_size("H20") is None
    assert hardware(get_device("A100-80G")).l2_bytes == 40 * MB


def test_derived_kernel_fixed_costs_scale_with_the_boost_clock():
    assert clock_ratio("L40S", "A100-80G") == pytest.approx(1.41 / 2.52)
    assert clock_ratio("B200", "H100") is None and boost_clock("B200") is None
    l40s = gpu_constants("L40S", CAL)
    a100 = CAL.gpus["A100-80G"]
    for name in ("t_fixed_s", "t_item_s", "t_wave_s"):  # cycles of SM work: 1.41 / 2.52 of the A100's time
        assert l40s.constants["attention"][name].value == pytest.approx(
            a100["attention"][name].value * 1.41 / 2.52
        )
        assert "SM clock ratio A100-80G/L40S 0.56" in l40s.constants["attention"][name].source
    assert l40s.constants["mode"]["graph_gap_s"].value == pytest.approx(
        a100["mode"]["graph_gap_s"].value * 1.41 / 2.52
    )
    assert l40s.constants["attention"]["eta"].value == a100["attention"]["eta"].value  # shares are not times
    assert l40s.constants["allreduce"]["alpha_LL_s"].value == a100["allreduce"]["alpha_LL_s"].value  # fabric
    b200 = gpu_constants("B200", CAL).constants["attention"]["t_fixed_s"]
    assert b200.value == CAL.gpus["H100"]["attention"]["t_fixed_s"].value
    assert "not clock-scaled: no published boost clock for B200" in b200.source


def test_vllm_allreduce_floor_is_the_elementwise_kernel_floor():
    model = gpu_model(get_device("A100-80G"), CAL, mode="graph")
    c = model.constants.values("allreduce")
    floor = model.constants.values("elementwise")["t_norm_s"] + model.graph_gap_s
    # 1 KiB over 2 GPUs, one-stage: floor + 2 alpha_LL + 1 KiB / (300 GB/s eta_bus)
    expected = floor + 2 * c["alpha_LL_s"] + 1024 / (300e9 * c["eta_bus"])
    assert float(model.allreduce(1024, 2)) == pytest.approx(expected)
    assert float(vllm_allreduce_s(c, model.hw, 1024, 2, floor)) == pytest.approx(expected)


# ---- the fit ----------------------------------------------------------------------------------------------


def test_gemm_fit_recovers_the_l2_rate_from_resident_rows():
    truth = {
        "t_fixed_s": 3e-6,
        "eta_mem": 0.9,
        "ramp_bytes": 2e5,
        "eta_cmp": 0.7,
        "q": 1.5,
        "l2_bw_per_sm": 45e9,
    }
    h = Hardware("t", 2e12, 300e12, 100e9, "nvlink", None, 100, "t", 40 * MB, "t")
    grid = [
        (m, n, k) for m in (1, 4, 16, 64, 256) for n in (1024, 2048, 4096, 8192) for k in (1024, 4096, 8192)
    ]
    m, n, k = (np.array(v, dtype=float) for v in zip(*grid, strict=True))
    ws = 6 * gemm_bytes(m, n, k)  # 12.6 MB to 800 MB: some rows resident, most not
    times = gemm_time_s(truth, h, m, n, k, ws_bytes=ws)
    gemm, _ = fit_gemm(h, m, n, k, times, np.zeros_like(m), ["synthetic"], ws)
    assert gemm.median_abs_err < 1e-3
    assert gemm.values["l2_bw_per_sm"] == pytest.approx(45e9, rel=0.05)
    # no resident row: the rate is the parent's, named as derived, and the rows fit the same
    parent = Constant(45e9, "derived", "P's measured-fit constant (fitted on x)", "2026-01-01")
    cold, _ = fit_gemm(h, m, n, k, gemm_time_s(truth, h, m, n, k), np.zeros_like(m), ["s"], None, parent)
    assert "l2_bw_per_sm" not in cold.values and cold.constants("2026-01-02")["l2_bw_per_sm"] == parent
