"""Parts of the Lamina runtime (reference_impl/lamina/): layout, head routing, step plans, clock, links,
and the exact attention split. The runtime as a whole is tested in test_lamina.py."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from reference_impl.attention import attention_with_lse, merge_attention
from reference_impl.errors import ConfigError
from reference_impl.lamina.attention_worker import new_token_attention
from reference_impl.lamina.clock import WorkerClock
from reference_impl.lamina.layout import (
    ATTENTION,
    COMPUTE,
    HeadRouting,
    Layout,
    check_schedule_order,
    kv_head_ranges,
    split_batch,
)
from reference_impl.lamina.links import Links, status_tensor
from reference_impl.lamina.plan import Op, Phase, StepPlan
from reference_impl.pipeline import Step, schedule

# ---- layout ----------------------------------------------------------------------------------------


def test_layout_puts_compute_ranks_first_and_groups_tp_ranks_by_replica():
    layout = Layout(compute_workers=4, attention_workers=3, pipeline_batches=3)  # 2 replicas x TP 2
    assert (layout.replicas, layout.tp, layout.world_size) == (2, 2, 7)
    assert [layout.role(r) for r in range(7)] == [COMPUTE] * 4 + [ATTENTION] * 3
    assert [layout.replica_of(r) for r in range(4)] == [0, 0, 1, 1]
    assert [layout.tp_rank_of(r) for r in range(4)] == [0, 1, 0, 1]
    assert layout.compute_rank(1, 1) == 3
    assert [layout.attention_rank(w) for w in range(3)] == [4, 5, 6]
    assert layout.worker_of(6) == 2


def test_slice_replica_follows_the_rotational_rule():
    # slice k of batch j on replica ((j + k) mod (n - 1)) + 1, here 0-based: (j + k) mod (n - 1)
    layout = Layout(compute_workers=3, attention_workers=1, pipeline_batches=4)
    for j, k in itertools.product(range(4), range(6)):
        assert layout.slice_replica(j, k) == (j + k) % 3
    ping_pong = Layout(1, 1, pipeline_batches=2)
    assert {ping_pong.slice_replica(j, k) for j in range(2) for k in range(5)} == {0}


@pytest.mark.parametrize(
    "args, message",
    [
        ((0, 1, 1), "need >= 1 compute worker"),
        ((3, 1, 3), "must be a multiple of 2"),
        ((1, 0, 1), "need >= 1 compute worker"),
    ],
)
def test_layout_rejects_impossible_counts(args, message):
    with pytest.raises(ConfigError, match=message):
        Layout(*args)


def test_layout_with_two_batches_but_two_replicas_is_no_pipeline():
    # 2 batches means ping-pong on one replica; 2 compute workers then form a TP 2 group, not replicas
    layout = Layout(compute_workers=2, attention_workers=1, pipeline_batches=2)
    assert (layout.replicas, layout.tp) == (1, 2)


# ---- head routing ----------------------------------------------------------------------------------


def test_kv_head_ranges_hand_worked():
    assert kv_head_ranges(5, 2) == [(0, 3), (3, 5)]
    assert kv_head_ranges(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    with pytest.raises(ConfigError, match="3 workers for 2 KV heads"):
        kv_head_ranges(2, 3)


def test_routing_tp2_with_two_workers_pairs_them_one_to_one():
    routing = HeadRouting(num_heads=4, num_kv_heads=2, tp_size=2, num_workers=2)  # G = 2
    routes = routing.routes()
    assert [(r.tp_rank, r.worker, r.kv_start, r.kv_stop) for r in routes] == [(0, 0, 0, 1), (1, 1, 1, 2)]
    for r in routes:  # each TP rank has 1 KV head (2 query heads) locally, each worker too
        assert (r.compute_kv, r.compute_q, r.worker_q) == (slice(0, 1), slice(0, 2), slice(0, 2))


def test_routing_one_compute_rank_two_workers_splits_its_heads():
    routing = HeadRouting(num_heads=8, num_kv_heads=4, tp_size=1, num_workers=2)  # G = 2
    r0, r1 = routing.from_tp_rank(0)
    assert (r0.worker, r0.compute_kv, r0.compute_q, r0.worker_q) == (0, slice(0, 2), slice(0, 4), slice(0, 4))
    assert (r1.worker, r1.compute_kv, r1.compute_q, r1.worker_q) == (1, slice(2, 4), slice(4, 8), slice(0, 4))


def test_routing_two_tp_ranks_into_one_worker():
    routing = HeadRouting(num_heads=4, num_kv_heads=4, tp_size=2, num_workers=1)
    r0, r1 = routing.to_worker(0)
    assert (r0.tp_rank, r0.compute_q, r0.worker_q) == (0, slice(0, 2), slice(0, 2))
    assert (r1.tp_rank, r1.compute_q, r1.worker_q) == (1, slice(0, 2), slice(2, 4))


@pytest.mark.parametrize(
    "heads, kv_heads, tp, workers", [(8, 4, 2, 3), (12, 6, 3, 4), (6, 6, 1, 5), (8, 2, 2, 2)]
)
def test_routes_cover_every_head_once_from_both_sides(heads, kv_heads, tp, workers):
    """Concatenating route slices in order rebuilds each side's local heads exactly."""
    routing = HeadRouting(heads, kv_heads, tp, workers)
    group = heads // kv_heads
    q_global = torch.arange(heads)  # query head ids
    for t in range(tp):
        local = q_global[routing.tp_range(t)[0] * group : routing.tp_range(t)[1] * group]
        parts = [local[r.compute_q] for r in routing.from_tp_rank(t)]
        assert torch.equal(torch.cat(parts), local)
    for w in range(workers):
        start, stop = routing.worker_range(w)
        expected = q_global[start * group : stop * group]
        got = torch.cat([q_global[r.kv_start * group : r.kv_stop * group] for r in routing.to_worker(w)])
        assert torch.equal(got, expected)
        for r in routing.to_worker(w):  # worker_q addresses the same heads inside the worker's range
            assert torch.equal(expected[r.worker_q], q_global[r.kv_start * group : r.kv_stop * group])


def test_routing_rejects_heads_that_do_not_split():
    with pytest.raises(ConfigError, match="split evenly over 4 TP ranks"):
        HeadRouting(num_heads=6, num_kv_heads=6, tp_size=4, num_workers=1)


def test_split_batch_is_contiguous_and_balanced():
    assert split_batch(7, 3) == (3, 2, 2)
    assert split_batch(1, 2) == (1, 0)
    assert split_batch(0, 2) == (0, 0)


# ---- plans -----------------------------------------------------------------------------------------


def _random_plan(rng: random.Random) -> StepPlan:
    n = rng.randint(0, 5)
    lens = tuple(rng.randint(1, 4) for _ in range(n))
    micro = split_batch(n, 3) if n and rng.random() < 0.5 else ()
    return StepPlan(
        op=rng.choice(list(Op)),
        step_id=rng.randint(0, 10**6),
        phase=rng.choice(list(Phase)),
        redo=rng.random() < 0.5,
        epoch=rng.randint(0, 9),
        seq_ids=tuple(rng.sample(range(1000), n)),
        query_lens=lens,
        positions=tuple(rng.randint(0, 500) for _ in range(n)),
        micro_batches=micro,
        reserves=tuple((rng.randint(0, 99), rng.randint(1, 999)) for _ in range(rng.randint(0, 3))),
        frees=tuple(rng.randint(0, 99) for _ in range(rng.randint(0, 3))),
        targets=tuple(range(rng.randint(0, 2))),
        tokens=tuple(rng.randint(0, 50_000) for _ in range(sum(lens))) if rng.random() < 0.7 else (),
    )


def test_plan_round_trips_through_its_tensor():
    rng = random.Random(0)
    for _ in range(200):
        plan = _random_plan(rng)
        encoded = plan.encode()
        assert encoded.dtype == torch.int64 and encoded.dim() == 1
        assert StepPlan.decode(encoded) == plan


def test_plan_for_attention_drops_only_the_tokens():
    plan = StepPlan(op=Op.STEP, seq_ids=(4, 9), query_lens=(3, 1), positions=(0, 7), tokens=(1, 2, 3, 4))
    assert plan.for_attention() == StepPlan(op=Op.STEP, seq_ids=(4, 9), query_lens=(3, 1), positions=(0, 7))
    assert plan.micro_batch_bounds() == []
    decode = StepPlan(
        op=Op.STEP, seq_ids=(1, 2, 3), query_lens=(1, 1, 1), positions=(5, 5, 5), micro_batches=(2, 1)
    )
    assert decode.micro_batch_bounds() == [(0, 2), (2, 3)]


def test_plan_rejects_inconsistent_sections():
    with pytest.raises(ValueError, match="one query_len and position per sequence"):
        StepPlan(op=Op.STEP, seq_ids=(1, 2), query_lens=(1,), positions=(0, 0))
    with pytest.raises(ValueError, match="do not add up"):
        StepPlan(op=Op.STEP, seq_ids=(1,), query_lens=(1,), positions=(0,), micro_batches=(1, 1))
    with pytest.raises(ValueError, match="carries 1 tokens for 3"):
        StepPlan(op=Op.STEP, seq_ids=(1,), query_lens=(3,), positions=(0,), tokens=(5,))
    bad = StepPlan(op=Op.STOP).encode()
    with pytest.raises(ValueError, match="does not match its head"):
        StepPlan.decode(torch.cat([bad, torch.tensor([7])]))


# ---- clock -----------------------------------------------------------------------------------------


class FakeTime:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_clock_charges_the_innermost_section_and_steps_add_up():
    now = FakeTime()
    clock = WorkerClock(now)
    now.t += 1.0  # other
    with clock.section("dense"):
        now.t += 2.0
        with clock.section("attention"):
            now.t += 3.0
        now.t += 0.5  # dense again
    with clock.section("idle"):
        now.t += 4.0
    step = clock.mark_step(0, "decode")
    assert (step.other_s, step.dense_s, step.attention_s, step.idle_s, step.network_s) == (
        1.0,
        2.5,
        3.0,
        4.0,
        0.0,
    )
    assert step.wall_s == 10.5
    with clock.section("network"):
        now.t += 0.25
    second = clock.mark_step(1, "decode")
    assert (second.network_s, second.wall_s) == (0.25, 0.25)
    with pytest.raises(ValueError, match="unknown time category 'gpu'"), clock.section("gpu"):
        pass


def test_clock_of_a_cuda_worker_waits_for_its_stream_inside_each_section(monkeypatch):
    """No GPU needed: a fake stream whose synchronize takes 2 s of fake time."""
    now, waits = FakeTime(), []

    class FakeStream:
        def synchronize(self):
            waits.append(now.t)
            now.t += 2.0  # the kernels the section launched finish now

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: FakeStream())
    clock = WorkerClock(now, device="cuda:0")
    with clock.section("dense"):
        now.t += 0.5  # launch time only
    with pytest.raises(RuntimeError), clock.section("attention"):
        raise RuntimeError("failed section: no wait")
    step = clock.mark_step(0, "decode")
    assert (step.dense_s, step.attention_s, step.other_s, len(waits)) == (2.5, 0.0, 0.0, 1)
    cpu = WorkerClock(now, device="cpu")
    with cpu.section("dense"):
        now.t += 0.5
    assert cpu.mark_step(0, "decode").dense_s == 0.5 and len(waits) == 1


# ---- links -----------------------------------------------------------------------------------------


class FlakyTransport:
    """Peer 2 is dead (every call raises like gloo's "Connection closed by peer"); peer 1 answers."""

    def __init__(self, replies):
        self.replies = replies
        self.sent = []

    def send(self, dst, kind, tensors):
        if dst == 2:
            raise RuntimeError("Connection closed by peer")
        self.sent.append((dst, kind, len(tensors)))

        class Done:
            def wait(self):
                return None

        return Done()

    def recv(self, src, kind, timeout_s=None):
        if src == 2:
            raise RuntimeError("Connection closed by peer")
        return self.replies.pop(0)


def test_links_mark_failed_peers_dead_and_treat_empty_messages_as_missing():
    links = Links(FlakyTransport(replies=[[torch.ones(2)], []]), WorkerClock())
    links.send(2, "qkv", [torch.zeros(1)])
    assert links.dead == {2}
    assert links.recv(2, "attn_out") is None  # dead: no call at all
    got = links.recv(1, "attn_out")
    assert got is not None and torch.equal(got[0], torch.ones(2))
    assert links.recv(1, "attn_out") is None  # an empty message is the poison of a failed step
    links.send(1, "ctrl", [torch.zeros(1)])
    links.flush()
    assert links.transport.sent == [(1, "ctrl", 1)] and links.dead == {2}
    assert status_tensor(True, links.dead).tolist() == [1, 2]


# ---- attention split -------------------------------------------------------------------------------


@pytest.mark.parametrize("group", [1, 2, 4])
def test_cached_part_merged_with_new_token_equals_full_attention(group):
    """The split's two parts merged by their log-sum-exp equal attention over all keys at once."""
    gen = torch.Generator().manual_seed(group)
    batch, kv_heads, head_dim = 3, 2, 16
    q = torch.randn(batch, kv_heads * group, head_dim, generator=gen)
    scale = head_dim**-0.5
    for b, cached in enumerate([1, 5, 17]):
        k_all = torch.randn(cached + 1, kv_heads, head_dim, generator=gen)
        v_all = torch.randn(cached + 1, kv_heads, head_dim, generator=gen)
        full, full_lse = attention_with_lse(q[b : b + 1], k_all, v_all, scale)
        old, old_lse = attention_with_lse(q[b : b + 1], k_all[:cached], v_all[:cached], scale)
        new, new_lse = new_token_attention(q[b : b + 1], k_all[cached:], v_all[cached:], scale)
        merged, lse = merge_attention(old, old_lse, new, new_lse)
        torch.testing.assert_close(merged, full, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(lse, full_lse, rtol=1e-5, atol=1e-6)


# ---- pipeline order --------------------------------------------------------------------------------


@pytest.mark.parametrize("batches, replicas", [(1, 1), (2, 1), (3, 2), (5, 4)])
def test_runtime_accepts_the_pipeline_schedule(batches, replicas):
    check_schedule_order(schedule(num_layers=3, num_batches=batches, num_compute_replicas=replicas))


def test_runtime_rejects_an_order_that_breaks_message_matching():
    swapped = [[Step("attention", 1, 0, 0), Step("attention", 0, 0, 0)]]
    with pytest.raises(ConfigError, match="cannot execute"):
        check_schedule_order(swapped)
