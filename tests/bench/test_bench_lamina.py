"""Benchmark (pytest-benchmark, skipped by default): 1 compute + 1 attention process, 1 batch vs ping-pong.

    .venv/bin/python -m pytest tests/bench/test_bench_lamina.py --benchmark-only -s

Reports, per mode, the decode time per token and per step (median over decode steps, measured) and
each worker's share of decode-step time spent dense / in attention / on the network / idle (blocked
waiting for the other pool). The model is a random Llama-style checkpoint sized so that on one CPU
core a layer's dense part and its attention take comparable time (d = 768, 4 layers, GQA G = 3,
24 requests of 256-token prompts), which is where overlapping them can pay off. Each process gets
one torch thread (2 processes on this 2-core machine); other jobs on the machine perturb the figures.
"""

from __future__ import annotations

import random
import statistics
from pathlib import Path

import pytest
import torch

from reference_impl.engine import Request
from reference_impl.lamina import LaminaConfig, LaminaRun, generate_lamina

NUM_REQUESTS, PROMPT_TOKENS, NEW_TOKENS = 24, 256, 16


def _build_bench_model(path: Path) -> Path:
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=1024,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=4,
        num_attention_heads=12,
        num_key_value_heads=4,
        max_position_embeddings=1024,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def bench_model(tmp_path_factory) -> str:
    return str(_build_bench_model(tmp_path_factory.mktemp("lamina_bench") / "llama-d768"))


def _requests() -> list[Request]:
    rng = random.Random(0)
    return [
        Request(i, tuple(rng.randrange(1024) for _ in range(PROMPT_TOKENS)), NEW_TOKENS)
        for i in range(NUM_REQUESTS)
    ]


def _figures(run: LaminaRun) -> dict:
    steps = [it for it in run.engine.iterations if it.decode_seqs]
    out = {
        "decode_ms_per_token": 1e3 * run.engine.decode_s / run.engine.decode_tokens,
        "median_decode_step_ms": 1e3 * statistics.median(it.decode_s for it in steps),
        "mean_decode_batch": run.engine.mean_decode_batch,
    }
    for w in run.workers:
        for category in ("dense", "attention", "network", "idle"):
            out[f"{w.role}{w.rank}_{category}_share"] = w.share(category, kinds=("decode",))
    return out


@pytest.mark.parametrize("pipeline_batches", [1, 2], ids=["1-batch", "ping-pong"])
def test_bench_decode_1_compute_1_attention(benchmark, bench_model, pipeline_batches):
    cfg = LaminaConfig(
        model_dir=bench_model,
        compute_workers=1,
        attention_workers=1,
        pipeline_batches=pipeline_batches,
        ignore_eos=True,
    )
    requests = _requests()
    run = benchmark.pedantic(generate_lamina, args=(cfg, requests), rounds=1, iterations=1)
    figures = _figures(run)
    benchmark.extra_info.update(figures)
    mode = "ping-pong" if pipeline_batches == 2 else "1 batch"
    print(f"\n[lamina bench] {mode}: " + ", ".join(f"{k}={v:.3f}" for k, v in figures.items()))
    assert run.engine.generated_tokens == NUM_REQUESTS * NEW_TOKENS
