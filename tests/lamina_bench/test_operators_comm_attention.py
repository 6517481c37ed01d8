"""Operator model: decode attention (split-KV heuristic, CTA waves, smooth max) and collectives (ring steps
and bytes, protocols, vLLM's custom all-reduce, the links between Lamina's pools), worked by hand."""

import numpy as np
import pytest

from lamina_bench.catalog.devices import get_device
from lamina_bench.model.ops.attention import (
    _splits,
    attention_bytes,
    attention_time_s,
    attention_waves,
    fa_splits,
)
from lamina_bench.model.ops.collectives import (
    nccl_allreduce_s,
    p2p_time_s,
    pool_link,
    ring_link_bytes,
    ring_steps,
    vllm_allreduce_s,
    vllm_stages,
)
from lamina_bench.model.ops.hardware import Hardware, hardware


def hw(sms=100, link=100e9) -> Hardware:
    return Hardware("test", 1e12, 1e15, link, "nvlink", 50e9, sms, "test")


# ---- attention ----------------------------------------------------------------------------------------


def test_split_kv_heuristic_like_flash_attention():
    # FlashAttention's own example: 48 (sequence, head) items on 108 SMs -> 2 splits (efficiency 0.89)
    assert fa_splits(48, 108, blocks=2) == 2
    # enough items to fill 80% of the slots: no split
    assert fa_splits(100, 108, blocks=64) == 1
    # one item, 4 KV blocks: the best efficiency is 4 splits (4/108); the smallest within 85% of it is 4
    assert fa_splits(1, 108, blocks=4) == 4


def test_vectorised_splits_equal_the_heuristic_per_item():
    rng = np.random.default_rng(0)
    for slots in (108, 132, 264):
        work, blocks = rng.integers(1, 600, 3000), rng.integers(1, 400, 3000)
        expected = [fa_splits(int(w), slots, int(b)) for w, b in zip(work, blocks, strict=True)]
        assert _splits(work, blocks, slots).tolist() == expected


def test_attention_ctas_waves_and_fill():
    a = {"chunk_tokens": 128, "ctas_per_sm": 1}
    # 30 sequences x 4 KV heads = 120 items >= 80 of 100 slots: no split, 120 CTAs = 2 waves, 60% busy
    ctas, waves, fill = attention_waves(a, hw(sms=100), 30, 4096, 4)
    assert (float(ctas), float(waves), float(fill)) == (120.0, 2.0, pytest.approx(0.6))
    # 1 sequence x 8 KV heads, 1024 tokens = 8 blocks: split 8 ways -> 64 CTAs, one wave, 64% busy
    ctas, waves, fill = attention_waves(a, hw(sms=100), 1, 1024, 8)
    assert (float(ctas), float(waves), float(fill)) == (64.0, 1.0, pytest.approx(0.64))


def test_attention_bytes_and_time_by_hand():
    # 2 sequences x 10 tokens x (K + V) x 2 KV heads x 8 dims x 2 B + q and out 2 x 4 heads x 8 x 2 B
    assert float(attention_bytes(2, 10, 4, 2, 8)) == 2 * 2 * 8 * (2 * 10 * 2 + 2 * 4)
    a = {"t_fixed_s": 5e-6, "t_item_s": 1e-7, "t_wave_s": 1e-6, "eta": 0.5, "q": 1.0, "chunk_tokens": 128,
         "ctas_per_sm": 1}  # fmt: skip
    # 30 x 4 items (2 waves, fill 0.6), 4096 tokens: bytes = 30*2*128*(2*4096*4 + 2*8)
    nbytes = 30 * 2 * 128 * (2 * 4096 * 4 + 2 * 8)
    expect = 5e-6 + 2 * 1e-6 + 30 * 4 * 1e-7 + nbytes / (1e12 * 0.5 * 0.6)
    assert float(attention_time_s(a, hw(sms=100), 30, 4096, 8, 4, 128)) == pytest.approx(expect)
    # q = 2: the per-item work and the KV stream overlap (hypot instead of the sum)
    a2 = a | {"q": 2.0}
    expect2 = 5e-6 + 2e-6 + np.hypot(30 * 4 * 1e-7, nbytes / (1e12 * 0.5 * 0.6))
    assert float(attention_time_s(a2, hw(sms=100), 30, 4096, 8, 4, 128)) == pytest.approx(expect2)


# ---- collectives --------------------------------------------------------------------------------------

AR = {"t_fixed_s": 5e-6, "alpha_LL_s": 1e-6, "alpha_LL128_s": 2e-6, "alpha_Simple_s": 5e-6, "eta_bus": 0.8}


def test_ring_steps_and_bytes():
    assert ring_steps(8) == 14 and ring_steps(2) == 2
    assert float(ring_link_bytes(1e6, 4)) == pytest.approx(1.5e6)  # 2 (n-1)/n of the buffer
    assert float(ring_link_bytes(1e6, 2)) == pytest.approx(1e6)


def test_nccl_allreduce_picks_the_fastest_protocol():
    link = hw(link=100e9)
    # 4 ranks, 1 KB: 6 steps; LL: 5 + 6*1 + 1500 B / (100e9 * 0.8 * 0.5) = 11.0375 us; the others are slower
    small = nccl_allreduce_s(AR, link, 1000, 4)
    assert float(small) == pytest.approx(5e-6 + 6e-6 + 1500 / 40e9)
    # 4 ranks, 100 MB: Simple wins: 5 + 6*5 + 150e6 / 80e9 us
    big = nccl_allreduce_s(AR, link, 100e6, 4)
    assert float(big) == pytest.approx(5e-6 + 30e-6 + 150e6 / 80e9)
    assert float(nccl_allreduce_s(AR, link, 100e6, 1)) == 0.0


def test_nccl_allreduce_across_nodes_uses_the_tree_for_small_messages():
    link = hw(link=100e9)
    one_node = nccl_allreduce_s(AR, link, 1000, 16, nodes=1)
    two_nodes = nccl_allreduce_s(AR, link, 1000, 16, nodes=2)
    assert float(two_nodes) > float(one_node)  # the NIC hops pay the RDMA latency
    # tree over 2 nodes of 8: 2*7 intra steps + 2*1 inter steps (alpha + NCCL one-way 33.3 us), LL
    lat = 66.6e-6 / 2
    tree = 5e-6 + 14 * 1e-6 + 2 * (1e-6 + lat) + 2 * 1000 / (50e9 * 0.8 * 0.5)
    assert float(two_nodes) == pytest.approx(tree)


def test_vllm_custom_allreduce_algorithm_choice():
    assert list(vllm_stages([1e3, 1e7], 2)) == [1, 1]  # world size 2: always 1-stage
    assert list(vllm_stages([500 * 1024, 600 * 1024], 4)) == [1, 2]  # 512 KiB cut-off at <= 4 ranks
    assert list(vllm_stages([200 * 1024, 300 * 1024], 8)) == [1, 2]  # 256 KiB at 8 ranks
    link = hw(link=100e9)
    one = vllm_allreduce_s(AR, link, 1e5, 2, kernel_s=4e-6)  # 4 + 2*1 + 1 * 1e5 / 80e9
    assert float(one) == pytest.approx(4e-6 + 2e-6 + 1e5 / 80e9)
    two = vllm_allreduce_s(AR, link, 1e6, 8, kernel_s=4e-6)  # 4 + 3*1 + 1.75e6 / 80e9
    assert float(two) == pytest.approx(4e-6 + 3e-6 + 1.75e6 / 80e9)
    above = vllm_allreduce_s(AR, link, 16 * 2**20, 8, kernel_s=4e-6)  # above 8 MiB: NCCL
    assert float(above) == pytest.approx(float(nccl_allreduce_s(AR, link, 16 * 2**20, 8)))


def test_p2p_and_the_link_between_pools():
    assert float(p2p_time_s({"t_fixed_s": 7e-6, "eta_link": 0.8}, hw(link=100e9), 8e6)) == pytest.approx(
        107e-6
    )
    h100 = hardware(get_device("H100"))  # 400 Gb/s NIC = 50 GB/s line rate
    lat, bw = pool_link("lamina", h100)
    assert (lat, bw) == (pytest.approx(16.5e-6), pytest.approx(45.7e9))  # the paper's figures
    lat, bw = pool_link("nccl", h100)
    assert (lat, bw) == (pytest.approx(33.3e-6), pytest.approx(35.5e9))
