"""Decode attention: torch reference vs dense softmax, lse merge, Triton paged kernel vs reference.

The Triton cases run under TRITON_INTERPRET=1 on CPU (set by tests/conftest.py) and, as a separate
`gpu` parametrization, on CUDA tensors where a GPU exists.
"""

import math

import pytest
import torch

from reference_impl.attention import (
    attention_with_lse,
    decode_attention,
    decode_attention_ref,
    merge_attention,
    merge_attention_many,
    prefill_attention_ref,
    resolve_backend,
)
from reference_impl.attention.inputs import random_paged_inputs
from reference_impl.errors import ConfigError

# Tolerances on out (atol = rtol) and lse (atol) of the Triton kernel vs the fp32 reference.
# Interpreter: all math is fp32 (operands are upcast after the load), so only the final rounding of
# out to the dtype differs: fp16 eps 2^-11, bf16 eps 2^-8, |out| <~ 3.
INTERP_TOL = {torch.float32: (1e-5, 1e-4), torch.float16: (2e-3, 1e-4), torch.bfloat16: (1.6e-2, 1e-4)}
# GPU: fp16/bf16 operands go to tensor cores and p is rounded to the value dtype before p@V.
GPU_TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (4e-3, 2e-3), torch.bfloat16: (3e-2, 2e-3)}


def make_paged(lens, num_q_heads, num_kv_heads, head_dim, block_size, dtype, device="cpu", seed=0):
    """Random paged inputs with 3 noise blocks nobody owns and a padding column of random valid block ids."""
    return random_paged_inputs(
        lens,
        num_q_heads,
        num_kv_heads,
        head_dim,
        block_size,
        dtype,
        device,
        seed,
        spare_blocks=3,
        pad_blocks=1,
    )


def dense_attention_f64(q, k, v, scale):
    """softmax(q k^T * scale) v in float64 for one query token: q (Hq,D), k/v (T,Hkv,D)."""
    group = q.shape[0] // k.shape[1]
    k = k.double().repeat_interleave(group, dim=1)
    v = v.double().repeat_interleave(group, dim=1)
    scores = torch.einsum("hd,thd->ht", q.double(), k) * scale
    return torch.einsum("ht,thd->hd", torch.softmax(scores, dim=-1), v), torch.logsumexp(scores, dim=-1)


# ---- torch reference ---------------------------------------------------------------------------


def test_reference_hand_worked():
    # q = [1, 0]; keys [1, 0] and [0, 0]; scale 1 -> scores 1 and 0:
    # lse = ln(e + 1) = 1.313262; out = (e * v0 + v1) / (e + 1) with v0 = [2, 0], v1 = [0, 4].
    q = torch.tensor([[[1.0, 0.0]]])  # (B=1, Hq=1, D=2)
    k_cache = torch.tensor([[[[1.0, 0.0]], [[0.0, 0.0]]]])  # (1 block, block_size 2, Hkv 1, D 2)
    v_cache = torch.tensor([[[[2.0, 0.0]], [[0.0, 4.0]]]])
    out, lse = decode_attention_ref(q, k_cache, v_cache, torch.tensor([[0]]), torch.tensor([2]), 1.0)
    e = math.e
    assert lse.item() == pytest.approx(1.313262, abs=1e-6)
    assert out[0, 0].tolist() == pytest.approx([2 * e / (e + 1), 4 / (e + 1)], abs=1e-6)


@pytest.mark.parametrize("num_q_heads,num_kv_heads", [(4, 4), (8, 2), (8, 1)])
def test_reference_decode_equals_dense(num_q_heads, num_kv_heads):
    lens, block_size, head_dim, scale = [1, 5, 16, 40], 16, 8, 0.37
    q, k_cache, v_cache, tables, seq_lens = make_paged(
        lens, num_q_heads, num_kv_heads, head_dim, block_size, torch.float32
    )
    out, lse = decode_attention_ref(q, k_cache, v_cache, tables, seq_lens, scale)
    for b, n in enumerate(lens):
        blocks = tables[b, : math.ceil(n / block_size)].long()
        k = k_cache[blocks].flatten(0, 1)[:n]  # contiguous copy of the sequence's keys
        v = v_cache[blocks].flatten(0, 1)[:n]
        want_out, want_lse = dense_attention_f64(q[b], k, v, scale)
        torch.testing.assert_close(out[b].double(), want_out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lse[b].double(), want_lse, atol=1e-5, rtol=1e-5)


def test_reference_zero_length_gives_zero_and_minus_inf():
    q, k_cache, v_cache, tables, _ = make_paged([16], 2, 1, 4, 16, torch.float32)
    out, lse = decode_attention_ref(q, k_cache, v_cache, tables, torch.tensor([0]), 1.0)
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.isneginf(lse).all()


def test_reference_keeps_dtype_and_lse_is_fp32():
    q, k_cache, v_cache, tables, seq_lens = make_paged([3], 2, 1, 4, 16, torch.bfloat16)
    out, lse = decode_attention_ref(q, k_cache, v_cache, tables, seq_lens, 0.5)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32


@pytest.mark.parametrize("causal_offset", [0, 5])
def test_prefill_ref_is_causal_dense(causal_offset):
    tq, hq, hkv, d, scale = 4, 4, 2, 8, 0.3
    tk = causal_offset + tq
    q, k, v = torch.randn(tq, hq, d), torch.randn(tk, hkv, d), torch.randn(tk, hkv, d)
    out, lse = prefill_attention_ref(q, k, v, scale, causal_offset)
    for i in range(tq):
        visible = causal_offset + i + 1
        want_out, want_lse = dense_attention_f64(q[i], k[:visible], v[:visible], scale)
        torch.testing.assert_close(out[i].double(), want_out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lse[i].double(), want_lse, atol=1e-5, rtol=1e-5)


# ---- merge -------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["random", "first_empty", "second_empty", "single_key"])
def test_merge_of_two_halves_equals_full(split):
    gen = torch.Generator().manual_seed(3)
    tq, tk, hq, hkv, d, scale = 3, 25, 4, 2, 8, 0.4
    q, k, v = (torch.randn(s, generator=gen) for s in ((tq, hq, d), (tk, hkv, d), (tk, hkv, d)))
    in_first = {
        "random": torch.rand(tk, generator=gen) < 0.5,
        "first_empty": torch.zeros(tk, dtype=torch.bool),
        "second_empty": torch.ones(tk, dtype=torch.bool),
        "single_key": torch.arange(tk) == 7,
    }[split]
    full_out, full_lse = attention_with_lse(q, k, v, scale)
    out1, lse1 = attention_with_lse(q, k, v, scale, in_first.expand(tq, tk))
    out2, lse2 = attention_with_lse(q, k, v, scale, (~in_first).expand(tq, tk))
    out, lse = merge_attention(out1, lse1, out2, lse2)
    torch.testing.assert_close(out, full_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, full_lse, atol=1e-5, rtol=1e-5)


def test_merge_of_two_empty_parts_is_empty():
    zeros, empty = torch.zeros(2, 3, 4), torch.full((2, 3), float("-inf"))
    out, lse = merge_attention(zeros, empty, zeros, empty)
    assert torch.equal(out, zeros) and torch.isneginf(lse).all()


def test_merge_hand_worked():
    # S1 = e^0 = 1, S2 = e^ln3 = 3: out = (1*[4] + 3*[0]) / 4 = [1]; lse = ln 4.
    out, lse = merge_attention(
        torch.tensor([[4.0]]), torch.tensor([0.0]), torch.tensor([[0.0]]), torch.log(torch.tensor([3.0]))
    )
    assert out.item() == pytest.approx(1.0) and lse.item() == pytest.approx(math.log(4.0))


def test_merge_many_equals_pairwise():
    outs, lses = torch.randn(4, 3, 2, 8), torch.randn(4, 3, 2)
    lses[1] = float("-inf")  # one empty part
    out, lse = merge_attention_many(outs, lses, dim=0)
    want_out, want_lse = outs[0], lses[0]
    for i in range(1, 4):
        want_out, want_lse = merge_attention(want_out, want_lse, outs[i], lses[i])
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(lse, want_lse)


# ---- Triton kernel -----------------------------------------------------------------------------

# (block_size, Hq, Hkv, D, lens, num_splits, dtype); interpreter cases stay small (few heads, D 16/32).
INTERP_CASES = [
    (16, 2, 2, 16, [1, 17, 300], 1, torch.float32),
    (32, 4, 1, 32, [5, 64, 1500], 3, torch.float16),
    (64, 8, 1, 32, [2000, 1, 0, 129], 4, torch.bfloat16),
    (128, 8, 2, 16, [3000, 700], 2, torch.float32),
    (16, 16, 2, 24, [33, 250], 5, torch.float16),  # D=24 is padded to 32; more splits than short seqs need
    (32, 1, 1, 16, [1, 2, 31, 32, 33], 2, torch.bfloat16),
    (16, 4, 1, 16, [40, 90], None, torch.float32),  # default num_splits
]
GPU_CASES = [
    (16, 32, 8, 128, [1, 100, 4097, 8000], None, torch.float16),
    (16, 32, 4, 128, [1, 100, 4097, 8000], 1, torch.bfloat16),
    (32, 8, 8, 64, [3000, 17, 0, 512], 8, torch.float32),
    (64, 64, 8, 128, [1, 2048, 333], 16, torch.bfloat16),
    (128, 16, 2, 128, [6000, 129], 4, torch.float16),
    (256, 8, 1, 80, [1000, 5], 3, torch.bfloat16),
]


def check_kernel_matches_reference(case, device, tolerances):
    block_size, num_q_heads, num_kv_heads, head_dim, lens, num_splits, dtype = case
    q, k_cache, v_cache, tables, seq_lens = make_paged(
        lens, num_q_heads, num_kv_heads, head_dim, block_size, dtype, device
    )
    scale = head_dim**-0.5
    from reference_impl.attention.triton_decode import decode_attention_triton

    out, lse = decode_attention_triton(q, k_cache, v_cache, tables, seq_lens, scale, num_splits=num_splits)
    want_out, want_lse = decode_attention_ref(q, k_cache, v_cache, tables, seq_lens, scale)
    out_tol, lse_tol = tolerances[dtype]
    assert out.dtype == dtype and out.shape == q.shape and lse.shape == q.shape[:2]
    torch.testing.assert_close(out.float(), want_out.float(), atol=out_tol, rtol=out_tol)
    torch.testing.assert_close(lse, want_lse, atol=lse_tol, rtol=0)


@pytest.mark.parametrize("case", INTERP_CASES, ids=lambda c: f"bs{c[0]}-g{c[1] // c[2]}-s{c[5]}-{c[6]}")
def test_triton_matches_reference_interpreter(case):
    check_kernel_matches_reference(case, "cpu", INTERP_TOL)


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: f"bs{c[0]}-g{c[1] // c[2]}-s{c[5]}-{c[6]}")
def test_triton_matches_reference_gpu(case):
    check_kernel_matches_reference(case, "cuda", GPU_TOL)


@pytest.mark.gpu
def test_auto_backend_uses_triton_on_cuda():
    assert resolve_backend("auto", torch.device("cuda")) == "triton"


def test_triton_rejects_unsupported_block_size_and_mixed_dtypes():
    from reference_impl.attention.triton_decode import decode_attention_triton

    q, k_cache, v_cache, tables, seq_lens = make_paged([5], 1, 1, 16, 8, torch.float32)
    with pytest.raises(ConfigError, match="block_size must be a power of two"):
        decode_attention_triton(q, k_cache, v_cache, tables, seq_lens, 1.0)
    q, k_cache, v_cache, tables, seq_lens = make_paged([5], 1, 1, 16, 16, torch.float32)
    with pytest.raises(ConfigError, match="one dtype"):
        decode_attention_triton(q.half(), k_cache, v_cache, tables, seq_lens, 1.0)


# ---- dispatch ----------------------------------------------------------------------------------


def test_dispatch_backends_on_cpu():
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    with pytest.raises(ConfigError, match="valid: auto, torch, triton"):
        resolve_backend("cuda", torch.device("cpu"))
    q, k_cache, v_cache, tables, seq_lens = make_paged([3, 40], 2, 1, 16, 16, torch.float32)
    via_torch = decode_attention(q, k_cache, v_cache, tables, seq_lens, 0.25, backend="torch")
    via_triton = decode_attention(q, k_cache, v_cache, tables, seq_lens, 0.25, backend="triton", num_splits=2)
    torch.testing.assert_close(via_triton, via_torch, atol=1e-5, rtol=1e-5)


# ---- benchmark (skipped by default: --benchmark-skip) ------------------------------------------


def test_benchmark_reference_decode_cpu(benchmark):
    # 8 sequences x 1024 tokens, 32 query / 8 kv heads, D 128, fp32, block_size 16.
    lens = [1024] * 8
    q, k_cache, v_cache, tables, seq_lens = make_paged(lens, 32, 8, 128, 16, torch.float32)
    out, _ = benchmark(decode_attention_ref, q, k_cache, v_cache, tables, seq_lens, 128**-0.5)
    assert out.shape == q.shape


def test_triton_num_splits_do_not_change_result():
    # Splits from 1 to more than the longest sequence's 19 pages (the last splits then hold no keys).
    from reference_impl.attention.triton_decode import decode_attention_triton

    q, k_cache, v_cache, tables, seq_lens = make_paged([300, 3], 4, 1, 16, 16, torch.float32, seed=5)
    want_out, want_lse = decode_attention_ref(q, k_cache, v_cache, tables, seq_lens, 0.25)
    for num_splits in (1, 4, 7, 25):
        out, lse = decode_attention_triton(q, k_cache, v_cache, tables, seq_lens, 0.25, num_splits=num_splits)
        torch.testing.assert_close(out, want_out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lse, want_lse, atol=1e-4, rtol=0)


def test_gpu_pipeline_depth_fits_shared_memory():
    from reference_impl.attention.triton_decode import num_stages_for

    assert num_stages_for(16, 128, 2) == 3  # 8 KB per K+V page
    assert num_stages_for(128, 128, 2) == 1  # 64 KB: one page at a time
    with pytest.raises(ConfigError, match="smaller block_size"):
        num_stages_for(256, 128, 4)  # 256 KB
