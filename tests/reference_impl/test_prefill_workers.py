"""Prefill workers in the Lamina runtime: transformers' greedy tokens on varied tiny models, the prompt KV
moved to the attention workers (exactly the KV bytes per token), decoding that goes on while prompts
are prefilled, and the placement of prompts on prefill workers worked by hand.

The threads launcher runs the same workers as threads of this process, so many model shapes stay cheap;
two configurations run as processes over gloo (about 5 s each on 2 idle cores).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from reference_impl.engine import Request
from reference_impl.errors import ConfigError
from reference_impl.lamina import LaminaConfig, generate_lamina
from reference_impl.lamina.layout import Layout
from reference_impl.lamina.plan import Op, StepPlan
from reference_impl.lamina.prefill_pool import PrefillPool
from tests.reference_impl.tiny_models import hf_logits

# name -> (query heads, KV heads, layers, hidden size): GQA with G = 2 and 4, MHA, one and four layers
SHAPES = {
    "gqa-g2-3l": (4, 2, 3, 64),
    "gqa-g4-2l": (8, 2, 2, 64),
    "mha-6h-1l": (6, 6, 1, 48),
    "mha-4h-4l": (4, 4, 4, 64),
}


def _requests() -> list[Request]:
    """8 requests, prompts of 1..21 tokens, arriving over 6 iterations while earlier ones decode."""
    rng = random.Random(5)
    lengths = [3, 21, 1, 8, 14, 2, 11, 5]
    arrivals = [0, 0, 0, 1, 2, 2, 4, 6]
    return [
        Request(
            i, tuple(rng.randrange(128) for _ in range(n)), max_new_tokens=rng.randint(1, 7), arrival_step=a
        )
        for i, (n, a) in enumerate(zip(lengths, arrivals, strict=True))
    ]


REQUESTS = _requests()


@torch.no_grad()
def _hf_model(shape: str):
    from transformers import AutoModelForCausalLM, LlamaConfig

    heads, kv_heads, layers, hidden = SHAPES[shape]
    config = LlamaConfig(
        vocab_size=128, hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=heads,
        num_key_value_heads=kv_heads, num_hidden_layers=layers, max_position_embeddings=128, rms_norm_eps=1e-5,
    )  # fmt: skip
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    gen = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():  # as tiny_models.build_tiny_hf_model: attention far from uniform
        noise = torch.randn(p.shape, generator=gen)
        p.copy_(1.0 + 0.1 * noise if "norm" in name else 0.15 * noise)
    return model.eval()


def _hf_greedy(model, prompt: tuple[int, ...], max_new_tokens: int) -> tuple[int, ...]:
    ids = list(prompt)
    for _ in range(max_new_tokens):
        ids.append(int(hf_logits(model, ids)[-1].argmax()))
    return tuple(ids[len(prompt) :])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, tuple[str, list[tuple[int, ...]]]]:
    """shape -> (checkpoint folder, transformers' greedy tokens of every request)."""
    root = tmp_path_factory.mktemp("prefill_models")
    out = {}
    for shape in SHAPES:
        model = _hf_model(shape)
        folder = Path(root) / shape
        model.save_pretrained(folder)
        out[shape] = (str(folder), [_hf_greedy(model, r.prompt_ids, r.max_new_tokens) for r in REQUESTS])
    return out


def _run(folder: str, **options):
    cfg = LaminaConfig(model_dir=folder, ignore_eos=True, **options)
    return generate_lamina(cfg, REQUESTS)


THREAD_CASES = {
    "gqa-g2-3l 1p 2a": ("gqa-g2-3l", {"prefill_workers": 1, "attention_workers": 2}),
    "gqa-g4-2l 2p 2a": ("gqa-g4-2l", {"prefill_workers": 2, "attention_workers": 2}),
    "mha-6h-1l 2p 2a": ("mha-6h-1l", {"prefill_workers": 2, "attention_workers": 2}),
    "mha-6h-1l 1p 1a": ("mha-6h-1l", {"prefill_workers": 1, "attention_workers": 1}),
    "mha-4h-4l 1p 2a ping-pong": ("mha-4h-4l", {"prefill_workers": 1, "attention_workers": 2, "pipeline_batches": 2}),
    "gqa-g4-2l 2p 2a split": ("gqa-g4-2l", {"prefill_workers": 2, "attention_workers": 2, "attention_split": True}),
    "gqa-g2-3l 1p 2a small cache": ("gqa-g2-3l", {"prefill_workers": 1, "attention_workers": 2, "num_blocks": 3,
                                                  "block_size": 16}),
}  # fmt: skip


@pytest.mark.parametrize("case", list(THREAD_CASES))
def test_threads_with_prefill_workers_give_transformers_tokens(case, checkpoints):
    shape, options = THREAD_CASES[case]
    folder, expected = checkpoints[shape]
    run = _run(folder, launcher="threads", **options)
    assert [c.output_ids for c in run.completions] == expected
    assert [c.request_id for c in run.completions] == [r.request_id for r in REQUESTS]


PROCESS_CASES = {
    "gqa-g2-3l 1p 2a": ("gqa-g2-3l", {"prefill_workers": 1, "attention_workers": 2}),
    "mha-4h-4l 2p 2a": ("mha-4h-4l", {"prefill_workers": 2, "attention_workers": 2}),
    # slow: tensor-parallel compute (TP 2), and rotational pipelining (3 batches on 2 compute replicas)
    "gqa-g2-3l 1p 2a tp2": (
        "gqa-g2-3l",
        {"prefill_workers": 1, "attention_workers": 2, "compute_workers": 2},
    ),
    "gqa-g4-2l 1p 2a rotational": (
        "gqa-g4-2l",
        {"prefill_workers": 1, "attention_workers": 2, "compute_workers": 2, "pipeline_batches": 3},
    ),
}
SLOW_PROCESS_CASES = ("gqa-g2-3l 1p 2a tp2", "gqa-g4-2l 1p 2a rotational", "mha-4h-4l 2p 2a")


@pytest.fixture(scope="module")
def process_runs(checkpoints):
    cache = {}

    def get(case: str):
        if case not in cache:
            shape, options = PROCESS_CASES[case]
            cache[case] = _run(checkpoints[shape][0], **options)
        return cache[case]

    return get


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=pytest.mark.slow if c in SLOW_PROCESS_CASES else ()) for c in PROCESS_CASES],
)
def test_processes_with_prefill_workers_give_transformers_tokens(case, process_runs, checkpoints):
    shape, options = PROCESS_CASES[case]
    run = process_runs(case)
    assert [c.output_ids for c in run.completions] == checkpoints[shape][1]
    roles = [w.role for w in run.workers]
    assert roles.count("prefill") == options["prefill_workers"] and not run.recoveries
    prefill = [w for w in run.workers if w.role == "prefill"]
    assert all(w.total("dense") > 0 for w in prefill)  # every prefill worker ran a job
    compute = next(w for w in run.workers if w.rank == 0)
    assert [s.kind for s in compute.steps if s.kind == "prefill"] == []  # the compute worker never prefilled


@pytest.mark.parametrize("case", ["gqa-g2-3l 1p 2a", pytest.param("mha-4h-4l 2p 2a", marks=pytest.mark.slow)])
def test_prompt_kv_bytes_per_prefilled_token_are_the_kv_bytes_per_token(case, process_runs):
    """Prompt KV moved to the attention pool: 2 L Hkv D e bytes per prompt token (fp32: e = 4), once.

    gqa-g2-3l: 2 x 3 layers x 2 KV heads x 16 x 4 B = 768 B; mha-4h-4l: 2 x 4 x 4 x 16 x 4 = 2048 B.
    One message per job, layer and attention worker.
    """
    run = process_runs(case)
    per_token = {"gqa-g2-3l 1p 2a": 768, "mha-4h-4l 2p 2a": 2048}[case]
    prompt_tokens = sum(len(r.prompt_ids) for r in REQUESTS)  # 65
    kv = run.kind("prompt_kv")
    assert kv.payload_bytes == per_token * prompt_tokens
    m = run.model
    assert per_token == 2 * m.num_layers * m.num_kv_heads * m.head_dim * m.elem_bytes
    jobs = run.kind("prefill_out").messages
    assert kv.messages == jobs * m.num_layers * run.config.attention_workers
    assert run.kind("prefill_out").payload_bytes == len(REQUESTS) * 128 * 4  # (B, V) fp32 logits


def test_decode_steps_go_on_while_a_prompt_is_prefilled(checkpoints):
    """A request admitted in an iteration that also decoded others is only dispatched there: the
    iteration ends without waiting for its prefill, so its first token comes after that iteration."""
    folder, expected = checkpoints["gqa-g2-3l"]
    run = _run(folder, launcher="threads", prefill_workers=1, attention_workers=2)
    assert [c.output_ids for c in run.completions] == expected
    iterations = run.engine.iterations
    ends = [sum(it.wall_s for it in iterations[: i + 1]) for i in range(len(iterations))]
    overlapped = [c for c in run.completions if iterations[c.admitted_step].decode_seqs > 0]
    assert overlapped  # e.g. request 4, arriving at iteration 2 while requests 0-2 decode
    for c in overlapped:
        assert c.token_times_s[0] >= ends[c.admitted_step]
    assert sum(it.prefill_seqs for it in iterations) == len(REQUESTS)


def test_prompts_go_to_the_prefill_worker_with_the_fewest_tokens_outstanding():
    """Worked by hand: 3 prefill workers; worker 1 has a 10-token job in flight, loads [0, 10, 0].
    Prompts of 4, 6, 5, 2 tokens: 4 -> worker 0 (tie with 2, lower index; [4, 10, 0]), 6 -> worker 2
    ([4, 10, 6]), 5 -> worker 0 ([9, 10, 6]), 2 -> worker 2 ([9, 10, 8])."""
    pool = PrefillPool(Layout(1, 2, prefill_workers=3))
    busy = StepPlan(op=Op.PREFILL, seq_ids=(7,), query_lens=(10,), positions=(0,), tokens=tuple(range(10)))
    pool.add(busy, worker=1, result=None)
    assert pool.outstanding_tokens() == [0, 10, 0]
    assert pool.assign([4, 6, 5, 2]) == [(0, [0, 2]), (2, [1, 3])]
    assert pool.prompts == {7: tuple(range(10))}


def test_layout_puts_prefill_ranks_last():
    layout = Layout(2, 2, pipeline_batches=3, prefill_workers=2)  # 2 replicas, 2 attention, 2 prefill
    assert layout.world_size == 6
    assert [layout.role(r) for r in range(6)] == ["compute"] * 2 + ["attention"] * 2 + ["prefill"] * 2
    assert list(layout.prefill_ranks()) == [4, 5] and layout.prefill_of(5) == 1
    assert list(layout.attention_ranks()) == [2, 3]


def test_negative_prefill_workers_is_a_config_error(checkpoints):
    with pytest.raises(ConfigError, match="prefill workers must be >= 0"):
        LaminaConfig(model_dir=checkpoints["gqa-g2-3l"][0], prefill_workers=-1)
