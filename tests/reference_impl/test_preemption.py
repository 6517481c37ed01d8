"""The engine's vllm policy (scheduling.py): admission, block growth and preemption by recompute, worked by
hand on a block-counting executor, checked against the simulator's replay of the same policy, and token
parity with reserve-all and transformers on a tiny random checkpoint."""

import numpy as np
import pytest
import torch

from reference_impl.engine import Engine, Request
from reference_impl.errors import ConfigError
from reference_impl.kv_accounting import KVAccounting, bookkeeping_cache
from reference_impl.scheduling import (
    VLLM_MAX_NUM_BATCHED_TOKENS,
    VLLM_MAX_NUM_SEQS,
    SchedulerConfig,
)

VOCAB = 50
VLLM = SchedulerConfig("vllm")


class BlockExecutor(KVAccounting):
    """Real block accounting (a bookkeeping cache) and logits that put all mass on (last token + 1) % VOCAB;
    records (seq ids, query lengths, free blocks before the forward) of every forward."""

    def __init__(self, num_blocks: int, block_size: int, max_position: int = 1000):
        super().__init__(bookkeeping_cache(num_blocks, block_size))
        self.max_position = max_position
        self.calls: list[tuple[list[int], list[int]]] = []
        self.held: list[dict[int, int]] = []  # blocks each sequence holds at each forward

    def forward(self, seq_ids, tokens):
        for s, chunk in zip(seq_ids, tokens, strict=True):  # the policy took every block the step writes
            assert self.cache.blocks_needed(self.cache.length(s) + len(chunk)) <= len(
                self.cache.block_table(s)
            )
        self.cache.prepare(list(seq_ids), [len(t) for t in tokens])  # lengths advance, no block is taken
        self.calls.append((list(seq_ids), [len(t) for t in tokens]))
        self.held.append({s: len(self.cache.block_table(s)) for s in seq_ids})
        logits = torch.full((len(seq_ids), VOCAB), -1.0)
        for i, chunk in enumerate(tokens):
            logits[i, (chunk[-1] + 1) % VOCAB] = 1.0
        return logits

    def agree(self, ids):
        return ids


def _expected(req: Request) -> tuple[int, ...]:
    return tuple((req.prompt_ids[-1] + i) % VOCAB for i in range(1, req.max_new_tokens + 1))


def _serve(reqs, num_blocks, block_size, scheduler=VLLM, **engine_kwargs):
    ex = BlockExecutor(num_blocks, block_size)
    run = Engine(ex, scheduler=scheduler, **engine_kwargs).run(reqs)
    assert [c.output_ids for c in run.completions] == [_expected(r) for r in reqs]
    assert ex.cache.num_free_blocks == num_blocks  # everything freed
    return run, ex


def test_one_preemption_worked_by_hand():
    # Blocks of 4 tokens, 5 blocks. A (prompt 3, 6 new), B (4, 6), C (2, 5). KV held while decoding = prompt +
    # generated - 1 tokens; a decode writing token index t takes a new block when t % 4 == 0.
    # it0: A, B, C admitted on their prompt blocks (1 each; 2 free), prefilled, each samples token 1.
    # it1: B writes index 4 -> new block (1 free).   it2: A writes index 4 -> new block (0 free).
    # it3: C writes index 4 and needs a block, none free: C (the most recently admitted) is preempted, its
    #      block freed (1 free); A, B decode; nobody is admitted in a preempting iteration. C held 2 + 3 - 1
    #      = 4 KV tokens, recomputed later.
    # it4: C waits: its re-prefill (2 + 3 = 5 tokens) needs 2 blocks, 1 is free.
    # it5: B writes index 8 -> its third block (0 free); A and B finish; retired after admission: 5 free.
    # it6: C re-prefills 5 tokens (2 blocks) and samples its 4th token.  it7: C decodes its 5th, finishes.
    a, b, c = Request(0, (1, 2, 3), 6), Request(1, (10, 11, 12, 13), 6), Request(2, (20, 21), 5)
    run, ex = _serve([a, b, c], num_blocks=5, block_size=4)
    assert ex.calls == [
        ([0, 1, 2], [3, 4, 2]),
        ([0, 1, 2], [1, 1, 1]),
        ([0, 1, 2], [1, 1, 1]),
        ([0, 1], [1, 1]),
        ([0, 1], [1, 1]),
        ([0, 1], [1, 1]),
        ([2], [5]),
        ([2], [1]),
    ]
    assert ex.held[1] == {0: 1, 1: 2, 2: 1} and ex.held[2] == {0: 2, 1: 2, 2: 1}
    assert ex.held[5] == {0: 2, 1: 3} and ex.held[6] == {2: 2}
    assert [it.preemptions for it in run.iterations] == [0, 0, 0, 1, 0, 0, 0, 0]
    assert [it.free_kv_tokens // 4 for it in run.iterations] == [2, 1, 0, 1, 1, 5, 3, 5]
    assert [it.waiting for it in run.iterations] == [0, 0, 0, 1, 1, 1, 0, 0]
    assert [(x.preemptions, x.recomputed_tokens, x.admitted_step) for x in run.completions] == [
        (0, 0, 0),
        (0, 0, 0),
        (1, 4, 0),  # admitted_step is the first admission
    ]
    assert (run.preemptions, run.recomputed_tokens, run.scheduler) == (1, 4, "vllm")
    assert [it.prefill_tokens for it in run.iterations] == [9, 0, 0, 0, 0, 0, 5, 0]


def test_two_preemptions_in_one_step_keep_admission_order_in_the_queue():
    # Blocks of 2, 3 blocks. A, B, C (prompt 2, 4 new each) take one block each at it0 (0 free).
    # it1: all three write index 2 and need a block: C is preempted (1 free, 2 needed), then B (2 free, 1
    #      needed); A decodes. The queue is [B, C]: B went back in front of C.
    # it2: B's re-prefill (2 + 1 = 3 tokens, 2 blocks) waits, 1 free.  it3: A takes its 3rd block, finishes.
    # it4: B re-prefills (2 blocks, 1 free); C's 2 blocks wait.  it5, it6: B decodes (it6: new block), ends.
    # it7: C re-prefills; it8, it9: C decodes.
    reqs = [Request(i, (5 * i, 5 * i + 1), 4) for i in range(3)]
    run, ex = _serve(reqs, num_blocks=3, block_size=2)
    assert [call[0] for call in ex.calls] == [[0, 1, 2], [0], [0], [0], [1], [1], [1], [2], [2], [2]]
    assert [q for _, q in ex.calls if len(q) == 1 and q[0] > 1] == [[3], [3]]  # the re-prefills
    assert [it.preemptions for it in run.iterations] == [0, 2, 0, 0, 0, 0, 0, 0, 0, 0]
    assert [(x.preemptions, x.recomputed_tokens) for x in run.completions] == [(0, 0), (1, 2), (1, 2)]


def test_token_budget_and_max_num_seqs():
    # Budget 6 tokens: it0 admits A (3) and B (3), and C (2) finds no budget left; it1: 2 decodes leave 4,
    # C is admitted. With max_num_seqs 2 instead, C waits for A and B to finish (3 new tokens: it2).
    reqs = [Request(0, (1, 2, 3), 3), Request(1, (4, 5, 6), 3), Request(2, (7, 8), 3)]
    budget = SchedulerConfig("vllm", max_num_seqs=4, max_num_batched_tokens=6)
    run, ex = _serve(reqs, num_blocks=100, block_size=4, scheduler=budget)
    assert ex.calls[:3] == [([0, 1], [3, 3]), ([0, 1], [1, 1]), ([2], [2])]
    assert [c.admitted_step for c in run.completions] == [0, 0, 1]
    capped = SchedulerConfig("vllm", max_num_seqs=2)
    run, ex = _serve(reqs, num_blocks=100, block_size=4, scheduler=capped)
    assert [c.admitted_step for c in run.completions] == [0, 0, 3]  # A and B end at it2, retired after it
    # the engine's own batch cap applies too (the smaller one wins)
    run, _ = _serve(reqs, num_blocks=100, block_size=4, max_batch_size=1)
    assert [c.admitted_step for c in run.completions] == [0, 3, 6]


def test_admission_counts_prompt_blocks_where_reserve_all_counts_everything():
    # 3 blocks of 4: vllm admits both (prompts 5 and 3: 2 + 1 blocks), reserve-all only the first (5 + 4 =
    # 9 tokens = 3 blocks), and no preemption is needed here since r1 finishes before r0 needs its 3rd block
    reqs = [Request(0, (1,) * 5, 4), Request(1, (2,) * 3, 2)]
    vllm, _ = _serve(reqs, num_blocks=3, block_size=4)
    reserve_all, _ = _serve(reqs, num_blocks=3, block_size=4, scheduler=SchedulerConfig())
    assert [c.admitted_step for c in vllm.completions] == [0, 0]
    assert [c.admitted_step for c in reserve_all.completions] == [0, 3]
    assert vllm.preemptions == reserve_all.preemptions == 0


@pytest.mark.parametrize("seed", range(4))
def test_engine_follows_the_simulators_replay(seed):
    """Random requests under the engine and lamina_bench's paged_replay (chunked mode, with a budget no
    prefill reaches, so it never chunks): the same iterations, batches, prefills, admissions, preemptions."""
    from lamina_bench.model.paged_replay import paged_replay
    from lamina_bench.model.scheduler import Scheduler

    rng = np.random.default_rng(seed)
    n, bs, blocks = 12, 4, 14
    prompts = rng.integers(1, 20, n)
    outputs = rng.integers(1, 30, n)
    outputs = np.minimum(outputs, blocks * bs - prompts)  # every request fits the cache alone
    reqs = [
        Request(i, tuple([i + 1] * int(p)), int(o))
        for i, (p, o) in enumerate(zip(prompts, outputs, strict=True))
    ]
    run, _ = _serve(reqs, num_blocks=blocks, block_size=bs, scheduler=SchedulerConfig("vllm", max_num_seqs=5))
    zero = lambda *args: np.zeros(np.broadcast(*args[:3]).shape)  # noqa: E731
    policy = Scheduler("vllm", block_size=bs, max_num_seqs=5, max_num_batched_tokens=8192, prefill="chunked")
    rep = paged_replay(prompts, outputs, np.zeros(n), blocks * bs, zero, policy)
    assert run.preemptions >= 3  # the case is a real test of preemption
    its = run.iterations
    assert rep.batch.tolist() == [it.decode_seqs for it in its]
    assert rep.prefill_tokens.tolist() == [it.prefill_tokens for it in its]
    assert rep.prefill_seqs.tolist() == [it.prefill_seqs for it in its]
    assert rep.admit_iteration.tolist() == [c.admitted_step for c in run.completions]
    assert rep.preemptions.tolist() == [c.preemptions for c in run.completions]


def test_vllm_defaults_are_the_simulators():
    from lamina_bench.model.scheduler import VLLM_MAX_NUM_BATCHED_TOKENS as SIM_TOKENS
    from lamina_bench.model.scheduler import VLLM_MAX_NUM_SEQS as SIM_SEQS

    assert (VLLM_MAX_NUM_SEQS, VLLM_MAX_NUM_BATCHED_TOKENS) == (SIM_SEQS, SIM_TOKENS)
    assert (VLLM.seq_cap, VLLM.token_budget) == (256, 8192)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: SchedulerConfig("fcfs"), "unknown scheduler 'fcfs'; valid: reserve-all, vllm"),
        (lambda: SchedulerConfig(max_num_seqs=4), "--max-num-seqs apply to --scheduler vllm only"),
        (lambda: SchedulerConfig("vllm", max_num_seqs=0), "--max-num-seqs must be an integer >= 1, got 0"),
        (
            lambda: SchedulerConfig("vllm", max_num_seqs=8, max_num_batched_tokens=4),
            r"--max-num-batched-tokens \(4\) must be >= --max-num-seqs \(8\)",
        ),
    ],
)
def test_bad_scheduler_options(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_requests_that_could_never_run_are_rejected_before_work():
    ex = BlockExecutor(num_blocks=2, block_size=4)
    with pytest.raises(
        ConfigError, match="prompt of 9 tokens needs 3 KV blocks of 4 tokens but the whole cache has 2"
    ):
        Engine(ex, scheduler=VLLM).run([Request(0, (1,) * 9, 1)])
    with pytest.raises(ConfigError, match="whole cache holds 8"):  # prompt fits, prompt + output does not
        Engine(ex, scheduler=VLLM).run([Request(0, (1,) * 5, 4)])
    tight = SchedulerConfig("vllm", max_num_seqs=1, max_num_batched_tokens=6)
    with pytest.raises(ConfigError, match="prefills of up to 7 tokens .* exceed --max-num-batched-tokens 6"):
        Engine(BlockExecutor(10, 4), scheduler=tight).run([Request(0, (1,) * 4, 4)])
    assert not ex.calls


# ---- token parity on a tiny random checkpoint ---------------------------------------------------------

PARITY_NEW = 20
PARITY_PROMPTS = (5, 9, 3, 12, 7, 4)


@pytest.fixture(scope="module")
def gqa_checkpoint(tmp_path_factory):
    """(folder, prompts, transformers' greedy tokens) of a tiny random Llama-3.1 GQA checkpoint."""
    from tests.reference_impl.tiny_models import build_tiny_hf_model

    folder = tmp_path_factory.mktemp("gqa-preempt")
    hf = build_tiny_hf_model("llama31-gqa", seed=5)
    hf.save_pretrained(folder)
    # greedy over all PARITY_NEW tokens: the engine is given no stop ids, so neither is transformers (its
    # min_new_tokens would instead forbid eos, a token the engine may pick)
    hf.generation_config.eos_token_id = None
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, hf.config.vocab_size, (n,), generator=gen).tolist() for n in PARITY_PROMPTS]
    expected = []
    with torch.no_grad():
        for ids in prompts:
            out = hf.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=PARITY_NEW,
                do_sample=False,
                pad_token_id=0,
            )
            expected.append(out[0, len(ids) :].tolist())
    return folder, prompts, expected


def test_preemptions_leave_the_tokens_unchanged(gqa_checkpoint):
    """A cache of 12 blocks of 4 tokens (the longest request needs 8 alone) forces several preemptions; every
    token equals the reserve-all run's and transformers' greedy generate."""
    from reference_impl.checkpoint import load_model
    from reference_impl.homogeneous import HomogeneousExecutor

    folder, prompts, expected = gqa_checkpoint
    model = load_model(folder)
    reqs = [Request(i, tuple(ids), PARITY_NEW) for i, ids in enumerate(prompts)]
    runs = {}
    for name in ("reserve-all", "vllm"):
        executor = HomogeneousExecutor(model, num_blocks=12, block_size=4)
        runs[name] = Engine(executor, scheduler=SchedulerConfig(name)).run(reqs)
        assert executor.kv_free_blocks() == 12
    vllm, reserve_all = runs["vllm"], runs["reserve-all"]
    assert vllm.preemptions >= 3 and vllm.recomputed_tokens > 0 and reserve_all.preemptions == 0
    assert [list(c.output_ids) for c in vllm.completions] == expected
    assert [list(c.output_ids) for c in reserve_all.completions] == expected


@pytest.mark.parametrize(
    "options",
    [
        {"launcher": "threads"},
        {"launcher": "threads", "pipeline_batches": 2},
        pytest.param({"launcher": "processes"}, marks=pytest.mark.slow),
    ],
)
def test_lamina_attention_pool_preempts_like_the_baseline(gqa_checkpoint, options):
    """Lamina (2 attention workers, each holding 12 blocks for its KV heads; no pipelining or ping-pong) under
    vllm: the same iterations, preemptions and tokens as the homogeneous engine with 12 blocks."""
    from reference_impl.config import GenerateConfig
    from reference_impl.homogeneous import generate
    from reference_impl.lamina import LaminaConfig, generate_lamina

    folder, prompts, expected = gqa_checkpoint
    reqs = [Request(i, tuple(ids), PARITY_NEW) for i, ids in enumerate(prompts)]
    common = {
        "model_dir": str(folder),
        "block_size": 4,
        "num_blocks": 12,
        "scheduler": "vllm",
        "ignore_eos": True,
    }
    baseline = generate(GenerateConfig(**common), reqs)
    run = generate_lamina(LaminaConfig(**common, attention_workers=2, **options), reqs).engine

    def schedule(r):
        return [(it.decode_seqs, it.prefill_seqs, it.preemptions, it.free_kv_tokens) for it in r.iterations]

    assert run.preemptions >= 3 and schedule(run) == schedule(baseline)
    assert [list(c.output_ids) for c in run.completions] == expected
