"""Reference engine microbenchmark: one CPU decode step of HomogeneousExecutor on a tiny model.

Each timed round is one decode step for 8 sequences with 64 cached tokens each; the untimed setup
re-creates that state (free, reserve, prefill), so every round does the same work.
Skipped by default; run with `pytest tests/bench --benchmark-only --benchmark-json=FILE`.
"""

from __future__ import annotations

import pytest
import torch

from reference_impl.checkpoint import load_model
from reference_impl.homogeneous import HomogeneousExecutor
from reference_impl.kv_cache import DEFAULT_BLOCK_SIZE
from tests.reference_impl.tiny_models import build_tiny_model

BATCH, PROMPT_LEN = 8, 64


@pytest.fixture(scope="module")
def executor(tmp_path_factory):
    model = load_model(build_tiny_model("llama31-gqa", tmp_path_factory.mktemp("tiny") / "llama"))
    blocks = BATCH * -(-(PROMPT_LEN + 1) // DEFAULT_BLOCK_SIZE)
    return HomogeneousExecutor(model, num_blocks=blocks, block_size=DEFAULT_BLOCK_SIZE, backend="torch")


def test_bench_engine_decode_step_cpu(benchmark, executor):
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, 256, (BATCH, PROMPT_LEN), generator=gen).tolist()
    seq_ids = list(range(BATCH))

    def setup():
        for sid in seq_ids:
            if executor.cache.has(sid):
                executor.free(sid)
            executor.reserve(sid, PROMPT_LEN + 1)
        executor.forward(seq_ids, prompts)  # prefill: fills the KV cache
        return (seq_ids, [[7]] * BATCH), {}

    logits = benchmark.pedantic(executor.forward, setup=setup, rounds=30, iterations=1, warmup_rounds=2)
    assert logits.shape == (BATCH, 256) and torch.isfinite(logits).all()
