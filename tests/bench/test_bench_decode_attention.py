"""Decode attention microbenchmarks: the torch reference on CPU, the Triton paged kernel on a GPU.

Skipped by default (`--benchmark-skip` in pytest's addopts); run with
`pytest tests/bench --benchmark-only --benchmark-json=FILE` and compare two such files with
`lamina-bench compare BASE.json HEAD.json`. Each benchmark first checks its result against a dense
softmax attention on the same random inputs, so a fast wrong kernel cannot pass.
"""

from __future__ import annotations

import pytest
import torch

from reference_impl.attention import decode_attention
from reference_impl.attention.inputs import random_paged_inputs

# Shapes: a Llama-3-like GQA head layout (G = 4), head_dim 128, 16-token KV blocks.
NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 8, 2, 128, 16


def paged_inputs(batch: int, context_len: int, dtype: torch.dtype, device: str, seed: int = 0):
    """q (B,Hq,D), k/v caches, scattered block tables; seq_lens drawn from [context_len / 2, context_len]."""
    lens = torch.randint(
        context_len // 2, context_len + 1, (batch,), generator=torch.Generator().manual_seed(seed)
    )
    return random_paged_inputs(
        lens.tolist(), NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE, dtype, device, seed
    )


def dense_attention(q, k_cache, v_cache, tables, lens) -> torch.Tensor:
    """Plain softmax attention per sequence in float64, the check for both backends: (B, Hq, D)."""
    out = []
    for b, n in enumerate(lens.tolist()):
        keys = k_cache[tables[b]].flatten(0, 1)[:n].double()  # (S, Hkv, D)
        values = v_cache[tables[b]].flatten(0, 1)[:n].double()
        group = NUM_Q_HEADS // NUM_KV_HEADS
        keys, values = keys.repeat_interleave(group, 1), values.repeat_interleave(group, 1)  # (S, Hq, D)
        probs = (torch.einsum("hd,shd->hs", q[b].double(), keys) * HEAD_DIM**-0.5).softmax(-1)
        out.append(torch.einsum("hs,shd->hd", probs, values))
    return torch.stack(out)


def test_bench_decode_attention_torch_cpu(benchmark):
    inputs = paged_inputs(batch=8, context_len=512, dtype=torch.float32, device="cpu")
    out, _ = benchmark(decode_attention, *inputs, HEAD_DIM**-0.5, backend="torch")
    torch.testing.assert_close(out.double(), dense_attention(*inputs), atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
def test_bench_decode_attention_triton_gpu(benchmark):
    inputs = paged_inputs(batch=32, context_len=2048, dtype=torch.float16, device="cuda")

    def step():
        result = decode_attention(*inputs, HEAD_DIM**-0.5, backend="triton")
        torch.cuda.synchronize()  # time the kernel, not its launch
        return result

    step()  # compile outside the timed rounds
    out, _ = benchmark(step)
    torch.testing.assert_close(out.double(), dense_attention(*inputs), atol=2e-3, rtol=2e-3)
