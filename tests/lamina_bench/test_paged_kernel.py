"""The compiled replay loop (model/paged_kernel.py) against the Python loop (model/paged_python.py) on random
traces: every per-iteration array and per-request result must be identical, in every mode (times after the
loop, times from a table while following arrivals, a closed loop, requests prefilled elsewhere)."""

import numpy as np
import pytest

import lamina_bench.model.paged_replay as paged
from lamina_bench.catalog.devices import parse_mix
from lamina_bench.catalog.models import get_model
from lamina_bench.model.iteration import iteration_model
from lamina_bench.model.scheduler import Scheduler
from lamina_bench.model.serving_time import time_table
from lamina_bench.model.system import SystemConfig

pytest.importorskip("numba")

FIELDS = ("batch", "sum_context", "prefill_tokens", "prefill_pairs", "prefill_seqs", "first_tokens",
          "kv_used_tokens", "time_s", "start_s", "admit_iteration", "first_token_iteration", "finish_iteration",
          "preemptions", "release_iteration")  # fmt: skip


def affine_time(batch, context, tokens, pairs, seqs, first):
    b, s, t = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in (batch, context, tokens)))
    return 1e-3 + 1e-5 * b + 1e-8 * s + 2e-6 * t + 1e-9 * np.asarray(pairs, dtype=float)


def both(monkeypatch, *args, **kwargs):
    """(compiled, python) replays of the same arguments."""
    assert paged.compiled(args[4] if kwargs.get("follow_arrivals") else None)
    fast = paged.paged_replay(*args, **kwargs)
    monkeypatch.setattr(paged, "USE_COMPILED", False)
    slow = paged.paged_replay(*args, **kwargs)
    monkeypatch.setattr(paged, "USE_COMPILED", True)
    return fast, slow


def assert_same(fast, slow):
    for name in FIELDS:
        a, b = getattr(fast, name), getattr(slow, name)
        if a is None or b is None:
            assert a is None and b is None, name
        else:
            assert a.dtype == b.dtype and np.array_equal(a, b), name


def random_case(rng):
    n = int(rng.integers(1, 60))
    block = int(rng.choice([1, 2, 4, 16]))
    seqs = int(rng.integers(1, 9))
    budget = int(rng.integers(seqs, 64))
    pol = Scheduler("vllm", block_size=block, max_num_seqs=seqs, max_num_batched_tokens=budget,
                    prefill=str(rng.choice(["chunked", "separate"])))  # fmt: skip
    prompts = rng.integers(1, 40, n)
    outputs = rng.integers(1, 30, n)
    capacity = int(rng.integers(8, 200))  # small: preemptions, and some requests that never fit
    arrivals = np.sort(rng.uniform(0, 0.5, n))
    return prompts, outputs, arrivals, capacity, pol


@pytest.mark.parametrize("seed", range(40))
def test_compiled_loop_equals_the_python_loop(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    prompts, outputs, arrivals, capacity, pol = random_case(rng)
    assert_same(*both(monkeypatch, prompts, outputs, arrivals, capacity, affine_time, pol))  # saturate
    clients = int(rng.integers(1, 6))
    assert_same(
        *both(monkeypatch, prompts, outputs, arrivals, capacity, affine_time, pol, concurrency=clients)
    )


def _table(pol: Scheduler, system: str, max_seqs: int, max_context: int):
    spec = get_model("llama3.1-8b")
    if system == "lamina":
        config = SystemConfig("lamina", spec, parse_mix("1xH100"), parse_mix("2xH20"), scheduler=pol)
    else:
        config = SystemConfig("homogeneous", spec, parse_mix("1xH100"), scheduler=pol)
    return time_table(iteration_model(config), pol, max_seqs, max_context)


def _following_case(pol, system, prompts, outputs, arrivals, capacity):
    prompts, outputs = prompts * 40, outputs * 10  # contexts long enough for the attention launch to step
    table = _table(pol, system, pol.max_num_seqs, int((prompts + outputs).max()))
    return prompts, outputs, arrivals * 2.0, capacity * 20, table, pol


def test_the_random_cases_preempt_and_reject():
    """The cases above exercise preemption by recompute and requests that never fit."""
    preempted = rejected = 0
    for seed in range(12):
        prompts, outputs, arrivals, capacity, pol = random_case(np.random.default_rng(100 + seed))
        args = _following_case(pol, "homogeneous", prompts, outputs, arrivals, capacity)
        rep = paged.paged_replay(*args, follow_arrivals=True)
        preempted += bool(rep.preemptions.sum())
        rejected += bool((rep.admit_iteration < 0).any())
    assert preempted >= 4 and rejected >= 1


@pytest.mark.parametrize("system", ["homogeneous", "lamina"])
@pytest.mark.parametrize("seed", range(12))
def test_compiled_loop_follows_arrivals_like_the_python_loop(seed, system, monkeypatch):
    """Times from the same table as the replay goes, arrivals cutting decode runs; also requests arriving
    prefilled (a prefill pool)."""
    rng = np.random.default_rng(100 + seed)
    prompts, outputs, arrivals, capacity, pol = random_case(rng)
    args = _following_case(pol, system, prompts, outputs, arrivals, capacity)
    fast, slow = both(monkeypatch, *args, follow_arrivals=True)
    assert_same(fast, slow)
    assert fast.iterations and np.all(fast.time_s > 0)
    if pol.prefill == "chunked":
        assert_same(*both(monkeypatch, *args, follow_arrivals=True, prefilled=True))


def test_a_table_too_small_for_the_trace_is_refused():
    pol = Scheduler("vllm")
    table = _table(pol, "homogeneous", 8, 1024)
    with pytest.raises(ValueError, match="does not cover"):
        paged.paged_replay(
            np.array([2000]), np.array([10]), np.zeros(1), 10**6, table, pol, follow_arrivals=True
        )
