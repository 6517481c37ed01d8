"""The batched torch decode path against the per-sequence reference on random paged inputs."""

import pytest
import torch

from reference_impl.attention import decode_attention, decode_attention_ref
from reference_impl.attention.torch_decode import decode_attention_torch


def _paged(batch, hq, hkv, d, block_size, lens, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    max_blocks = max(-(-n // block_size) for n in lens) + 1
    num_blocks = batch * max_blocks + 3
    k = torch.randn(num_blocks, block_size, hkv, d, generator=gen).to(dtype)
    v = torch.randn(num_blocks, block_size, hkv, d, generator=gen).to(dtype)
    tables = (
        torch.randperm(num_blocks, generator=gen)[: batch * max_blocks]
        .view(batch, max_blocks)
        .to(torch.int32)
    )
    q = torch.randn(batch, hq, d, generator=gen).to(dtype)
    return q, k, v, tables, torch.tensor(lens, dtype=torch.int32)


@pytest.mark.parametrize(
    "hq, hkv, block_size, lens, dtype, tol",
    [
        (4, 4, 16, [1, 17, 64], torch.float32, 1e-5),
        (8, 2, 16, [300, 5, 0, 33], torch.float32, 1e-5),
        (16, 2, 32, [1000, 1, 77], torch.float32, 1e-5),
        (8, 1, 16, [129, 40], torch.bfloat16, 1e-2),
        (4, 1, 64, [65, 200, 3], torch.float16, 1e-3),
    ],
)
def test_batched_torch_decode_equals_reference(hq, hkv, block_size, lens, dtype, tol):
    q, k, v, tables, seq_lens = _paged(len(lens), hq, hkv, 32, block_size, lens, dtype, seed=len(lens) + hq)
    out, lse = decode_attention_torch(q, k, v, tables, seq_lens, 32**-0.5)
    ref_out, ref_lse = decode_attention_ref(q, k, v, tables, seq_lens, 32**-0.5)
    assert out.dtype == q.dtype
    torch.testing.assert_close(out.float(), ref_out.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-4)  # -inf for the empty sequence in both


def test_dispatch_uses_the_batched_path_on_cpu():
    q, k, v, tables, seq_lens = _paged(3, 8, 2, 16, 16, [5, 50, 20], torch.float32, seed=1)
    out, _ = decode_attention(q, k, v, tables, seq_lens, 0.25, backend="torch")
    torch.testing.assert_close(
        out, decode_attention_torch(q, k, v, tables, seq_lens, 0.25)[0], atol=0, rtol=0
    )
