"""vLLM V1 scheduler replay (model/paged_replay.py): tiny cases worked by hand, then a naive per-request
reference on random traces (tests/lamina_bench/vllm_reference.py)."""

import numpy as np
import pytest

from lamina_bench.model.paged_replay import paged_replay
from lamina_bench.model.scheduler import Scheduler
from tests.lamina_bench.vllm_reference import naive_vllm

TEN_MS = 0.010


def const_time(batch, context, tokens, pairs, seqs, first):
    return np.full(np.broadcast(batch, context, tokens).shape, TEN_MS)


def affine_time(batch, context, tokens, pairs, seqs, first):
    b, s, t = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in (batch, context, tokens)))
    return 1e-3 + 1e-5 * b + 1e-8 * s + 2e-6 * t + 1e-9 * np.asarray(pairs, dtype=float)


def policy(block=4, seqs=4, budget=8, prefill="chunked"):
    return Scheduler(
        "vllm", block_size=block, max_num_seqs=seqs, max_num_batched_tokens=budget, prefill=prefill
    )


def run(prompts, outputs, capacity_tokens, pol, time_fn=const_time, **kwargs):
    n = len(prompts)
    return paged_replay(
        np.array(prompts), np.array(outputs), np.zeros(n), capacity_tokens, time_fn, pol, **kwargs
    )


def test_admission_on_the_prompt_blocks_only():
    # blocks of 4 tokens, 3 blocks. r0 (prompt 5: 2 blocks) and r1 (prompt 3: 1 block) fill the cache at
    # iteration 0 although their outputs will need more; r2 (prompt 6: 2 blocks) waits. Reserve-all would
    # have admitted r0 alone (5 + 4 = 9 tokens of 12), not r1 (3 + 3 more).
    rep = run([5, 3, 6], [4, 3, 2], 12, policy())
    assert rep.admit_iteration[:2].tolist() == [0, 0] and rep.admit_iteration[2] > 0
    assert (rep.prefill_tokens[0], rep.prefill_seqs[0], rep.first_tokens[0]) == (8, 2, 2)
    assert rep.prefill_pairs[0] == 5 * 6 / 2 + 3 * 4 / 2  # causal pairs of each prompt: c (c + 1) / 2
    assert rep.kv_used_tokens[0] == 12  # 3 blocks x 4


def test_blocks_grow_as_decode_proceeds():
    # prompt 4 fills one block; decode writes token 5 (new block), 6, 7, 8, then 9 (third block).
    rep = run([4], [6], 64, policy())
    # iteration 0 prefill (KV 4, samples token 1); iterations 1-5 decode with contexts 5..9
    assert rep.batch.tolist() == [0, 1, 1, 1, 1, 1]
    assert rep.sum_context.tolist() == [0, 5, 6, 7, 8, 9]
    assert rep.kv_used_tokens.tolist() == [4, 8, 8, 8, 8, 12]
    assert rep.finish_iteration.tolist() == [5] and rep.first_token_iteration.tolist() == [0]


def test_preemption_by_recompute_step_by_step():
    # 3 blocks of 4. Iteration 0 admits r0 (prompt 5) and r1 (prompt 3): 3 blocks, both sample a token.
    # 1: r0 writes token 6, r1 token 4: no new block.
    # 2: r1 writes token 5 and needs a fourth block: none is free, so the most recently admitted running
    #    request, r1 itself, is preempted (its block freed, back to the queue front); r0 decodes alone.
    # 3: r0 writes token 8 and has its 4 tokens: done, its 2 blocks freed.
    # 4: r1 re-prefills prompt + its 2 tokens = 5 tokens (2 blocks) and samples its 3rd token: done;
    #    r2 (prompt 6) gets the 3 tokens of budget left (1 block) as a partial prefill.
    # 5: r2's last 3 tokens (pairs 3 x 3 + 6 = 15), first token; 6: r2 decodes its 2nd token: done.
    rep = run([5, 3, 6], [4, 3, 2], 12, policy())
    assert rep.batch.tolist() == [0, 2, 1, 1, 0, 0, 1]
    assert rep.sum_context.tolist() == [0, 10, 7, 8, 0, 0, 7]
    assert rep.prefill_tokens.tolist() == [8, 0, 0, 0, 8, 3, 0]
    assert rep.prefill_pairs.tolist() == [21, 0, 0, 0, 5 * 6 / 2 + 3 * 4 / 2, 15, 0]
    assert rep.first_tokens.tolist() == [2, 0, 0, 0, 1, 1, 0]  # r1's recompute samples a token too
    assert rep.kv_used_tokens.tolist() == [12, 12, 8, 8, 12, 8, 8]
    assert rep.preemptions.tolist() == [0, 1, 0]
    assert rep.admit_iteration.tolist() == [0, 0, 4]  # first admission
    assert rep.first_token_iteration.tolist() == [0, 0, 5]  # r1's first token stays iteration 0
    assert rep.finish_iteration.tolist() == [3, 4, 6]
    assert int(rep.generated.sum()) == 4 + 3 + 2


def test_max_num_seqs_and_the_token_budget():
    # one sequence at a time: r1 waits for r0
    rep = run([3, 3], [2, 2], 64, policy(seqs=1))
    assert rep.admit_iteration.tolist() == [0, 2] and rep.batch.max() == 1
    # a 10-token prompt with a budget of 4: chunks 4, 4, 2 in three iterations; the first token after the
    # last chunk. Pairs: 4 * 5 / 2 = 10, 4 * 4 + 10 = 26, 2 * 8 + 3 = 19.
    rep = run([10], [2], 64, policy(seqs=4, budget=4))
    assert rep.prefill_tokens.tolist()[:3] == [4, 4, 2]
    assert rep.prefill_pairs.tolist()[:3] == [10, 26, 19]
    assert rep.first_token_iteration.tolist() == [2] and rep.finish_iteration.tolist() == [3]
    # decodes take the budget first: iteration 0 admits four 1-token prompts and the first token of r4's
    # 3; then the 4 decodes leave 1 token of the budget of 5 per iteration: r4 completes at iteration 2
    rep = run([1, 1, 1, 1, 3], [9, 9, 9, 9, 1], 64, policy(seqs=5, budget=5))
    assert rep.prefill_tokens.tolist()[:4] == [5, 1, 1, 0] and rep.batch.tolist()[:4] == [0, 4, 4, 4]
    assert rep.first_token_iteration[4] == 2 and rep.finish_iteration[4] == 2


def test_separate_prefill_pauses_the_decodes():
    # budget 4. 0: prefill only: r0's prompt (3) and 1 token of r1's (r1 takes its whole prompt's block at
    # admission); 1: r1's last 3 prompt tokens (prefill work left, so no decode), r1's first token;
    # 2: both decode (r1 done: 2 tokens); 3: r0 decodes its 3rd token.
    rep = run([3, 4], [3, 2], 64, policy(budget=4, prefill="separate"))
    assert rep.prefill_tokens.tolist() == [4, 3, 0, 0]
    assert rep.batch.tolist() == [0, 0, 2, 1]  # no decode while there is prefill work
    assert rep.finish_iteration.tolist() == [3, 2]


def test_a_request_larger_than_the_cache_is_rejected():
    rep = run([10, 3], [10, 3], 16, policy())
    assert rep.admit_iteration.tolist() == [-1, 0] and rep.finish_iteration.tolist() == [-1, 2]


def test_closed_loop_sends_the_next_request_when_one_finishes():
    # 2 clients, 5 requests of prompt 4 and 3 tokens: each finishes 2 iterations after its prefill.
    rep = run([4] * 5, [3] * 5, 1000, policy(seqs=8, budget=64), concurrency=2)
    assert rep.release_iteration.tolist() == [-1, -1, 2, 2, 5]
    assert rep.admit_iteration.tolist() == [0, 0, 3, 3, 6]
    assert rep.finish_iteration.tolist() == [2, 2, 5, 5, 8]


@pytest.mark.parametrize("seed", range(36))
def test_replay_matches_the_naive_reference(seed):
    rng = np.random.default_rng(seed)
    n, bs = int(rng.integers(1, 30)), int(rng.choice([1, 2, 4, 16]))
    p, o = rng.integers(1, 100, n), rng.integers(1, 50, n)
    cap_blocks = int(max(-(-(p + o).max() // bs), rng.integers(5, 150)))
    seqs = int(rng.integers(1, 10))
    budget = int(rng.integers(seqs, 150))
    chunked, mode = bool(seed % 2), seed % 3
    follow, conc = mode == 1, (int(rng.integers(1, 6)) if mode == 2 else None)
    arrival = np.sort(rng.uniform(0, 0.2, n))
    pol = Scheduler("vllm", block_size=bs, max_num_seqs=seqs, max_num_batched_tokens=budget,
                    prefill="chunked" if chunked else "separate")  # fmt: skip
    rep = paged_replay(
        p, o, arrival, cap_blocks * bs, affine_time, pol, follow_arrivals=follow, concurrency=conc
    )
    rows, admit, first, finish, npre, release = naive_vllm(
        p.tolist(),
        o.tolist(),
        arrival.tolist(),
        cap_blocks,
        bs,
        seqs,
        budget,
        chunked,
        affine_time,
        follow,
        conc,
    )
    got = (rep.batch, rep.sum_context, rep.prefill_tokens, rep.prefill_pairs, rep.prefill_seqs, rep.first_tokens,
           rep.kv_used_tokens // bs)  # fmt: skip
    for column, values in enumerate(got):
        np.testing.assert_array_equal(values, rows[:, column])
    np.testing.assert_allclose(rep.start_s, rows[:, 7], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(rep.time_s, rows[:, 8], rtol=1e-12)
    assert rep.admit_iteration.tolist() == admit and rep.first_token_iteration.tolist() == first
    assert rep.finish_iteration.tolist() == finish and rep.preemptions.tolist() == npre
    if conc is not None:
        assert rep.release_iteration.tolist() == release
