"""Operator model, kernel level: GEMM (tiles, ramp, smooth max), elementwise floors, execution modes, and the
layer's kernels, each against numbers worked by hand."""

import numpy as np
import pytest

from lamina_bench.model.ops.constants import EAGER_LAUNCH_S
from lamina_bench.model.ops.gemm import (
    elementwise_time_s,
    gemm_bytes,
    gemm_time_s,
    sequence_time_s,
    tiles,
)
from lamina_bench.model.ops.hardware import Hardware
from lamina_bench.model.ops.layer import LAYER_OPS, LayerShape, layer_kernels
from lamina_bench.validate.files import load_files
from lamina_bench.validate.fit import op_kernel


def hw(mem_bw=1e12, flops=1e12, sms=100) -> Hardware:
    return Hardware("test", mem_bw, flops, 100e9, "nvlink", 50e9, sms, "test")


def gemm_consts(**changes):
    return {"t_fixed_s": 0.0, "eta_mem": 1.0, "ramp_bytes": 0.0, "eta_cmp": 1.0, "q": 1.0} | changes


def test_tile_quantisation_of_m_and_n():
    assert float(tiles(65, 64)) == 128.0  # m = 65 runs two 64-row tiles
    assert float(tiles(64, 64)) == 64.0
    assert float(tiles(1, 64)) == 64.0
    assert float(tiles(1100, 128)) == 1152.0
    # compute only (memory free): 2 * 128 * 128 * 1000 flops at 1 Tflop/s = 32.768 us, for m = 65 as for 128
    fast_memory = hw(mem_bw=1e30)
    t65 = gemm_time_s(gemm_consts(), fast_memory, 65, 100, 1000)
    t128 = gemm_time_s(gemm_consts(), fast_memory, 128, 100, 1000)
    assert float(t65) == pytest.approx(32.768e-6) and float(t128) == pytest.approx(32.768e-6)
    assert float(gemm_time_s(gemm_consts(), fast_memory, 129, 100, 1000)) == pytest.approx(1.5 * 32.768e-6)


def test_gemm_memory_term_ramp_and_fixed_cost():
    # bytes = 2 (1*1024 + 1024*1024 + 1*1024) = 2,101,248 B
    assert float(gemm_bytes(1, 1024, 1024)) == 2_101_248
    slow_compute_free = hw(flops=1e30)
    t = gemm_time_s(gemm_consts(t_fixed_s=3e-6, eta_mem=0.5), slow_compute_free, 1, 1024, 1024)
    assert float(t) == pytest.approx(3e-6 + 2_101_248 / 0.5e12)
    # the ramp: 1 MB must be in flight before full rate, i.e. B_eff(s) = B eta s / (s + 1e6)
    t = gemm_time_s(gemm_consts(ramp_bytes=1e6), slow_compute_free, 1, 1024, 1024)
    assert float(t) == pytest.approx((2_101_248 + 1e6) / 1e12)


def test_gemm_smooth_max():
    # m = 64, n = 128, k = 1000: t_cmp = 2*64*128*1000 / 1e12 = 16.384 us; bytes 2*(64e3 + 128e3 + 8192)
    m, n, k = 64, 128, 1000
    t_cmp = 2 * 64 * 128 * 1000 / 1e12
    t_mem = 2 * (64 * 1000 + 128 * 1000 + 64 * 128) / 1e12
    assert float(gemm_time_s(gemm_consts(q=1.0), hw(), m, n, k)) == pytest.approx(t_cmp + t_mem)
    assert float(gemm_time_s(gemm_consts(q=2.0), hw(), m, n, k)) == pytest.approx(np.hypot(t_cmp, t_mem))
    assert float(gemm_time_s(gemm_consts(q=60.0), hw(), m, n, k)) == pytest.approx(
        max(t_cmp, t_mem), rel=1e-2
    )


def test_elementwise_floor_grows_with_row_width():
    consts = {"t_norm_s": 2e-6, "t_rope_s": 1e-6, "t_act_s": 1e-6, "t_add_s": 0.5e-6, "per_width_s": 1e-10,
              "eta_el": 0.5}  # fmt: skip
    # norm of 1 token, d = 4096: 2 us + 4096 * 0.1 ns + (2*4096 + 4096) * 2 B / (0.5 * 1 TB/s)
    t = elementwise_time_s(consts, hw(), "norm", 4096, 2 * (2 * 4096 + 4096))
    assert float(t) == pytest.approx(2e-6 + 409.6e-9 + 24576 / 0.5e12)
    wide = elementwise_time_s(consts, hw(), "norm", 8192, 2 * (2 * 8192 + 8192))
    assert float(wide - t) == pytest.approx(409.6e-9 + 24576 / 0.5e12)
    with pytest.raises(ValueError):
        elementwise_time_s(consts, hw(), "softmax", 1, 1)


def test_execution_modes():
    kernels = [2e-6, 3e-6, 1e-6]
    assert float(sequence_time_s(kernels, "kernel", 1e-6)) == pytest.approx(6e-6)
    assert float(sequence_time_s(kernels, "graph", 1e-6)) == pytest.approx(9e-6)  # + 1 us per kernel
    # eager: never faster than one host launch per kernel
    assert float(sequence_time_s(kernels, "eager", 1e-6)) == pytest.approx(3 * EAGER_LAUNCH_S.value)
    assert float(sequence_time_s([50e-6] * 3, "eager", 1e-6)) == pytest.approx(153e-6)


def test_layer_kernels_of_llama2_7b():
    shape = LayerShape(4096, 11008, 32, 32, 128)
    k = {x.name: x for x in layer_kernels(shape, 1, tp=1)}
    assert [x.name for x in layer_kernels(shape, 1)] == list(LAYER_OPS)
    assert (k["attn_pre_proj"].n, k["attn_pre_proj"].k) == (12288, 4096)  # (32 + 2*32) * 128
    assert (k["mlp_up_proj"].n, k["mlp_up_proj"].k) == (22016, 4096)  # gate + up fused
    assert (k["mlp_down_proj"].n, k["mlp_down_proj"].k) == (4096, 11008)
    k4 = {x.name: x for x in layer_kernels(shape, 8, tp=4)}
    assert (k4["attn_pre_proj"].n, k4["attn_post_proj"].k, k4["mlp_act"].width) == (3072, 1024, 2752)
    assert float(k4["input_layernorm"].nbytes) == 2 * (2 * 8 * 4096 + 4096)


def test_layer_kernels_match_every_vidur_gemm_row():
    """The (m, n, k) Vidur's files state for each GEMM op equal the layer composition's."""
    for f in load_files(split="calibration"):
        if f.kind != "dense_op":
            continue
        for row in f.rows:
            kern = op_kernel(row)
            if kern.kind == "gemm":
                assert (float(kern.m), kern.n, kern.k) == (row["m"], row["n"], row["k"]), (f.id, row)
