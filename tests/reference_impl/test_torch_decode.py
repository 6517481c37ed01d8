"""The batched torch decode path against the per-sequence reference on random paged inputs."""

import pytest
import torch

from reference_impl.attention import decode_attention, decode_attention_ref
from reference_impl.attention.inputs import random_paged_inputs
from reference_impl.attention.torch_decode import decode_attention_torch


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
    q, k, v, tables, seq_lens = random_paged_inputs(
        lens, hq, hkv, 32, block_size, dtype, seed=len(lens) + hq, spare_blocks=3, pad_blocks=1
    )
    out, lse = decode_attention_torch(q, k, v, tables, seq_lens, 32**-0.5)
    ref_out, ref_lse = decode_attention_ref(q, k, v, tables, seq_lens, 32**-0.5)
    assert out.dtype == q.dtype
    torch.testing.assert_close(out.float(), ref_out.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-4)  # -inf for the empty sequence in both


def test_dispatch_uses_the_batched_path_on_cpu():
    q, k, v, tables, seq_lens = random_paged_inputs([5, 50, 20], 8, 2, 16, seed=1)
    out, _ = decode_attention(q, k, v, tables, seq_lens, 0.25, backend="torch")
    torch.testing.assert_close(
        out, decode_attention_torch(q, k, v, tables, seq_lens, 0.25)[0], atol=0, rtol=0
    )
