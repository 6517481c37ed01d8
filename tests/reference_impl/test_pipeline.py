"""Pipeline schedule and its timing simulation: hand-worked timelines, the paper's replica rule and
utilization claims, and a random comparison against an independent reference simulation."""

from __future__ import annotations

import random

import pytest

from reference_impl.errors import ConfigError
from reference_impl.pipeline import (
    ATTENTION,
    ATTENTION_POOL,
    DENSE,
    Step,
    pipeline_mode,
    schedule,
    simulate_schedule,
)

CONFIGS = [(1, 1), (2, 1), (3, 2), (4, 3), (5, 4)]  # (num_batches, num_compute_replicas)


def _spans(timeline, resource: int) -> list[tuple[str, int, int, float, float]]:
    """(kind initial, batch, index, start, end) per step, times rounded for exact comparison."""
    return [
        (s.kind[0], s.batch, s.index, round(s.start_s, 9), round(s.end_s, 9))
        for s in timeline.steps[resource]
    ]


@pytest.mark.parametrize(("batches", "replicas"), CONFIGS)
def test_every_task_scheduled_once_on_a_valid_resource(batches: int, replicas: int) -> None:
    layers = 5
    steps = schedule(layers, batches, replicas)
    assert len(steps) == replicas + 1
    keys = [s.key for work in steps for s in work]
    expected = {(DENSE, j, k) for j in range(batches) for k in range(layers + 1)}
    expected |= {(ATTENTION, j, k) for j in range(batches) for k in range(layers)}
    assert len(keys) == len(set(keys)) and set(keys) == expected
    assert all(s.kind == ATTENTION for s in steps[ATTENTION_POOL])
    for r in range(1, replicas + 1):
        assert all(s.kind == DENSE and s.replica == r for s in steps[r])


@pytest.mark.parametrize("batches", [3, 4, 5, 7])
def test_rotational_replica_rule(batches: int) -> None:
    steps = schedule(6, batches, batches - 1)
    for work in steps[1:]:
        for s in work:
            assert s.replica == (s.batch + s.index) % (batches - 1) + 1
    # replica i starts with batch i-1's slice 0: the stagger order of the paper
    assert [work[0].key for work in steps[1:]] == [(DENSE, i, 0) for i in range(batches - 1)]


def test_pipeline_mode_names_and_rules() -> None:
    assert [pipeline_mode(n, r) for n, r in [(1, 1), (2, 1), (3, 2), (8, 7)]] == [
        "single",
        "ping-pong",
        "rotational",
        "rotational",
    ]
    for n, r in [(3, 1), (2, 2), (1, 2), (4, 2)]:
        with pytest.raises(ConfigError, match="n batches on n-1 replicas"):
            schedule(4, n, r)
    with pytest.raises(ConfigError, match="num_layers must be >= 1"):
        schedule(0, 2, 1)
    with pytest.raises(ConfigError, match="num_batches >= 1"):
        schedule(4, 0, 1)


def test_single_batch_timeline_hand_worked() -> None:
    # L = 2, t_m = 1, t_a = 0.5, link 0.1: s0 [0,1] a0 [1.1,1.6] s1 [1.7,2.7] a1 [2.8,3.3] s2 [3.4,4.4]
    tl = simulate_schedule(schedule(2, 1, 1), 1.0, 0.5, 0.1)
    assert _spans(tl, 1) == [("d", 0, 0, 0.0, 1.0), ("d", 0, 1, 1.7, 2.7), ("d", 0, 2, 3.4, 4.4)]
    assert _spans(tl, 0) == [("a", 0, 0, 1.1, 1.6), ("a", 0, 1, 2.8, 3.3)]
    assert tl.iteration_time_s == pytest.approx(3 * 1.0 + 2 * 0.5 + 4 * 0.1)
    dense, attn = tl.usage[1], tl.usage[0]
    assert (dense.busy_s, dense.idle_s) == pytest.approx((3.0, 1.4))
    assert (attn.busy_s, attn.idle_s, attn.utilization) == pytest.approx((1.0, 3.4, 1.0 / 4.4))


@pytest.mark.parametrize("layers", [1, 4, 32])
def test_ping_pong_hides_attention_when_balanced(layers: int) -> None:
    t = 1.0  # t_a = t_m
    single = simulate_schedule(schedule(layers, 1, 1), t, t).iteration_time_s
    assert single == pytest.approx((layers + 1) * t + layers * t)
    ping_pong = simulate_schedule(schedule(layers, 2, 1), t, t).iteration_time_s
    # two batches: the dense replica never waits, so 2 (L + 1) t_m, i.e. ~2 max(t_m, t_a) per layer
    # instead of 2 (t_m + t_a) when the two batches run one after the other
    assert ping_pong == pytest.approx(2 * (layers + 1) * t)
    assert ping_pong < 2 * single


def test_rotational_three_batches_hand_worked() -> None:
    # n = 3, 2 replicas, L = 2, t_m = 1, t_a = 0.5 = t_m / (n - 1); worked out by hand.
    tl = simulate_schedule(schedule(2, 3, 2), 1.0, 0.5)
    assert _spans(tl, 1) == [
        ("d", 0, 0, 0, 1),
        ("d", 2, 0, 1, 2),
        ("d", 1, 1, 2, 3),
        ("d", 0, 2, 3, 4),
        ("d", 2, 2, 4, 5),
    ]
    assert _spans(tl, 2) == [
        ("d", 1, 0, 0, 1),
        ("d", 0, 1, 1.5, 2.5),
        ("d", 2, 1, 2.5, 3.5),
        ("d", 1, 2, 3.5, 4.5),
    ]
    assert _spans(tl, 0) == [
        ("a", 0, 0, 1, 1.5),
        ("a", 1, 0, 1.5, 2),
        ("a", 2, 0, 2, 2.5),
        ("a", 0, 1, 2.5, 3),
        ("a", 1, 1, 3, 3.5),
        ("a", 2, 1, 3.5, 4),
    ]
    assert tl.iteration_time_s == pytest.approx(5.0)


@pytest.mark.parametrize("batches", [2, 3, 4, 5])
def test_sized_attention_pool_keeps_both_pools_busy(batches: int) -> None:
    t_m, layers = 1.0, 32
    t_a = t_m / (batches - 1)  # the paper's sizing of the attention pool
    tl = simulate_schedule(schedule(layers, batches, batches - 1), t_m, t_a)
    steady = (2 * t_m, tl.iteration_time_s - 2 * t_m)  # skip the fill and drain
    for resource in range(batches):
        assert tl.utilization_between(resource, *steady) >= 0.99
    # and replica i runs t_m / (n - 1) behind replica i - 1 in the steady state
    for r in range(2, batches):
        prev = [s.start_s for s in tl.steps[r - 1] if steady[0] <= s.start_s <= steady[1]]
        here = [s.start_s for s in tl.steps[r] if steady[0] <= s.start_s <= steady[1]]
        assert {round((h - p) % t_m, 9) for p, h in zip(prev, here, strict=False)} == {round(t_a, 9)}


def test_undersized_attention_pool_starves_compute() -> None:
    # n = 3 with t_a = t_m (pool half the paper's size): the attention pool must serve two replicas,
    # so each replica can only be busy ~half the time.
    tl = simulate_schedule(schedule(32, 3, 2), 1.0, 1.0)
    steady = (2.0, tl.iteration_time_s - 2.0)
    assert tl.utilization_between(ATTENTION_POOL, *steady) >= 0.99
    for r in (1, 2):
        assert tl.utilization_between(r, *steady) == pytest.approx(0.5, abs=0.03)


def _reference_simulation(steps, dense: list[float], attention: list[float], link: float) -> dict:
    """Independent reference: process all steps in one global order (ideal start key, dense first)."""
    n = 1 + max(s.batch for work in steps for s in work)
    order = sorted(
        (s for work in steps for s in work), key=lambda s: (s.index * n + s.batch, s.kind != DENSE)
    )
    free, end = {}, {}
    for s in order:
        dep = (ATTENTION, s.batch, s.index - 1) if s.kind == DENSE else (DENSE, s.batch, s.index)
        ready = end[dep] + link if dep in end else 0.0
        start = max(free.get(s.replica, 0.0), ready)
        end[s.key] = free[s.replica] = start + (dense if s.kind == DENSE else attention)[s.index]
    return end


def test_simulation_matches_reference_on_random_inputs() -> None:
    rng = random.Random(0)
    for _ in range(40):
        batches = rng.randint(1, 6)
        layers = rng.randint(1, 12)
        dense = [rng.uniform(0.1, 2.0) for _ in range(layers + 1)]
        attention = [rng.uniform(0.1, 2.0) for _ in range(layers)]
        link = rng.choice([0.0, rng.uniform(0.0, 0.5)])
        steps = schedule(layers, batches, max(1, batches - 1))
        tl = simulate_schedule(steps, dense, attention, link)
        reference = _reference_simulation(steps, dense, attention, link)
        timed = {s.key: s for work in tl.steps for s in work}
        assert {k: s.end_s for k, s in timed.items()} == pytest.approx(reference)
        for s in timed.values():  # dependencies respected
            dep = (ATTENTION, s.batch, s.index - 1) if s.kind == DENSE else (DENSE, s.batch, s.index)
            if dep in timed:
                assert s.start_s >= timed[dep].end_s + link - 1e-12
        for work in tl.steps:  # one task at a time per resource
            assert all(a.end_s <= b.start_s + 1e-12 for a, b in zip(work, work[1:], strict=False))
        assert tl.iteration_time_s == pytest.approx(max(reference.values()))


def test_simulation_rejects_bad_input() -> None:
    steps = schedule(2, 2, 1)
    with pytest.raises(ConfigError, match="dense_time_s needs one value or 3"):
        simulate_schedule(steps, [1.0, 1.0], 1.0)
    with pytest.raises(ConfigError, match="attention_time_s must be finite and >= 0"):
        simulate_schedule(steps, 1.0, -1.0)
    swapped = [list(reversed(steps[0])), steps[1]]  # attention pool runs layer 1 before layer 0
    with pytest.raises(ConfigError, match="deadlocks"):
        simulate_schedule(swapped, 1.0, 1.0)
    with pytest.raises(ConfigError, match="more than once"):
        simulate_schedule([steps[0], steps[1] + steps[1][:1]], 1.0, 1.0)
    with pytest.raises(ConfigError, match="not scheduled"):
        simulate_schedule([steps[0][1:], steps[1]], 1.0, 1.0)


def test_step_validation() -> None:
    with pytest.raises(ValueError, match="attention runs on 0"):
        Step(DENSE, 0, 0, ATTENTION_POOL)
    with pytest.raises(ValueError, match="valid: 'dense'"):
        Step("ffn", 0, 0, 1)
    with pytest.raises(ValueError, match="both set"):
        Step(DENSE, 0, 0, 1, start_s=1.0)
