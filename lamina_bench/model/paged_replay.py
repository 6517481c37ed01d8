"""Replay of a trace through vLLM V1's scheduler (`model/scheduler.py`, policy `vllm`).

Iteration k, as vllm/v1/core/sched/scheduler.py schedules it (running requests first, in admission order,
then the waiting queue, within a token budget of max_num_batched_tokens):
  1. every decoding request computes one token and writes its KV; one whose last block is full needs a new
     block. While fewer blocks are free than needed, the most recently admitted running request is
     preempted by recompute: its blocks are freed and it goes back to the front of the queue. A step that
     preempted admits nobody.
  2. chunked prefill: the request in the middle of its prefill continues with min(rest, budget left);
     then waiting requests are admitted in order while fewer than max_num_seqs run, budget is left and the
     blocks of the prompt chunk that fits are free (the head blocks the queue).
     separate prefill: an iteration with prefill work (a partial prefill, or a head that can be admitted)
     runs only prefill, with the whole budget; decodes run in the other iterations. A request is admitted
     only when the blocks of its whole prompt are free and takes them at once (vLLM V0 allocates the whole
     prompt; SGLang admits a request only if its whole input fits), so a prompt computed over several
     prefill iterations never runs out of blocks midway (it would preempt itself forever).
  prefilled elsewhere (`prefilled`, a prefill pool, model/prefill_pool.py): a request arrives with its
     prompt's KV and first token; it is admitted (FIFO, within max_num_seqs) when the blocks of its prompt
     are free, computes no prefill token and takes no budget, and decodes from the next iteration. The
     prefill mode must be chunked: only a preempted request's recompute runs here.
  A prefill that completes samples the request's next token: its first, or, after a preemption, the one
  after those it had (the recompute prefills prompt + generated tokens). A request is done when it has
  all its output tokens; one whose prompt + output exceeds the whole KV capacity can never run and is
  rejected.

A decoding request that has generated g tokens writes the KV of token p + g (prompt p) and needs a new
block when (p + g - 1) is a multiple of the block size. Every decoder advances one token per decode
iteration, so its position within its block shifted by the decode clock is constant: the histogram of
those phases (block_size bins) gives the blocks a run of decode iterations needs, and the iteration where
they run out, in O(block_size). Runs of decode iterations between events (a finish, an admission, a
preemption, an arrival) are recorded in one step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lamina_bench.model.paged_python import STATE_ROWS, PagedLoop
from lamina_bench.model.scheduler import Scheduler
from lamina_bench.model.serving_time import ServingTimeTable

try:  # the compiled loop (model/paged_kernel.py); without numba, the Python one
    from lamina_bench.model import paged_kernel
except ImportError:  # pragma: no cover - numba is a dependency; a copy without it still replays
    paged_kernel = None

# time_fn(batch, sum_context, prefill_tokens, prefill_pairs, prefill_seqs, first_tokens) -> seconds; a
# time_fn with a `decode_run(batch, sum_context, steps, t, stop)` method gives a run's times itself, cut
# after the first iteration that ends at or after `stop` (model/serving_time.py)
ServingTimeFn = Callable[..., np.ndarray]


@dataclass(frozen=True, eq=False)
class ServingReplay:
    """What happened, per iteration (arrays of length `iterations`) and per request."""

    batch: np.ndarray  # (iterations,) int64 decoding requests (one token each)
    sum_context: np.ndarray  # (iterations,) int64 keys the decodes' attention reads
    prefill_tokens: np.ndarray  # (iterations,) int64 prompt (or recompute) tokens computed
    prefill_pairs: np.ndarray  # (iterations,) float64 (query, key) pairs of the causal prefill attention
    prefill_seqs: np.ndarray  # (iterations,) int64 requests with a prefill chunk
    first_tokens: np.ndarray  # (iterations,) int64 prefills that completed, each sampling one token
    kv_used_tokens: np.ndarray  # (iterations,) int64 KV in use (blocks x block size; reserve-all: reserved)
    time_s: np.ndarray  # (iterations,) float64
    start_s: np.ndarray  # (iterations,) float64
    admit_iteration: np.ndarray  # (requests,) int64 first admission; -1 = rejected
    first_token_iteration: np.ndarray  # (requests,) int64 iteration that produced the first token
    finish_iteration: np.ndarray  # (requests,) int64 iteration that produced the last token
    preemptions: np.ndarray  # (requests,) int64 times the request was preempted
    release_iteration: np.ndarray | None = None  # closed loop: the request was sent after this iteration

    @property
    def iterations(self) -> int:
        return len(self.batch)

    @property
    def generated(self) -> np.ndarray:
        """Tokens generated by each iteration: one per decode plus one per completed prefill."""
        return self.batch + self.first_tokens

    @property
    def end_s(self) -> float:
        return float(self.start_s[-1] + self.time_s[-1]) if len(self.batch) else 0.0


def paged_replay(
    prompt_len: np.ndarray,
    output_len: np.ndarray,
    arrival_s: np.ndarray,
    capacity_tokens: int,
    time_fn: ServingTimeFn,
    policy: Scheduler,
    max_batch_size: int | None = None,
    follow_arrivals: bool = False,
    concurrency: int | None = None,
    prefilled: bool = False,
) -> ServingReplay:
    """Replay under `policy` (module doc). `follow_arrivals`: admit a request once it has arrived (times
    are then computed as the replay goes); `concurrency`: closed loop of that many clients, each sending
    its next request when the previous one finished (arrival times are ignored); `prefilled`: requests arrive
    prefilled (module doc)."""
    prompt = np.asarray(prompt_len, dtype=np.int64)
    output = np.asarray(output_len, dtype=np.int64)
    bs = policy.block_size
    capacity_blocks = int(capacity_tokens) // bs
    runnable = np.flatnonzero(prompt + output <= capacity_blocks * bs)
    p, o = prompt[runnable], output[runnable]
    a = np.asarray(arrival_s, dtype=float)[runnable]
    loop_time = time_fn if follow_arrivals else None
    max_seqs = min(policy.max_num_seqs, max_batch_size or policy.max_num_seqs)
    if compiled(loop_time):
        table = loop_time
        if table is not None and (
            len(p) and (int((p + o).max()) > table.max_context or max_seqs > table.max_batch)
        ):
            raise ValueError("the time table does not cover this trace's contexts or batch cap")
        knobs = (capacity_blocks, bs, policy.max_num_batched_tokens, max_seqs, int(policy.prefill == "chunked"),
                 int(concurrency is not None), concurrency or 0, int(prefilled), int(table is not None))  # fmt: skip
        tab, line, layer, head = _table_arrays(table)
        rec, pairs, growth, times, t0, R = paged_kernel.replay_kernel(p, o, a, knobs, tab, line, layer, head)
        k = paged_kernel
        state = R[:, [k.ADMIT, k.FIRST, k.FINISH, k.PREEMPTED, k.RELEASE]].T
    else:
        loop = PagedLoop(p.tolist(), o.tolist(), a.tolist(), capacity_blocks, policy, max_batch_size, loop_time,
                         concurrency, prefilled)  # fmt: skip
        loop.run()
        rec, pairs, growth, times, t0, state = loop.arrays()
    return _assemble(rec, pairs, growth, times if loop_time is not None else None, t0, state, runnable, len(prompt),
                     time_fn, bs, concurrency is not None)  # fmt: skip


USE_COMPILED = True  # False: always the Python loop (tests compare the two)


def compiled(time_fn) -> bool:
    """The compiled loop runs when numba is installed and times are either computed after the loop (None)
    or come from a time table."""
    return (
        USE_COMPILED
        and paged_kernel is not None
        and (time_fn is None or isinstance(time_fn, ServingTimeTable))
    )


def _table_arrays(table: ServingTimeTable | None):
    """The arrays `paged_kernel.replay_kernel` reads the time from (placeholders without a table)."""
    if table is None:
        one = np.zeros(1)
        return (np.zeros(2, dtype=np.int64), np.zeros(1, dtype=np.int64), one), (0.0,) * 10, one, one
    line = (*table.prefill_line, float(table.lamina), float(table.L), table.kv_s_per_token, table.latency_s,
            table.cpu_per_request_s)  # fmt: skip
    return (table.offsets, table.knot_s, table.knot_t), line, table.layer, table.head


def _assemble(rec, pairs, growth, times, t0, state, runnable, n, time_fn, bs, closed_loop) -> ServingReplay:
    """The per-iteration arrays and per-request results of a loop's records (either loop)."""
    rec = {k: rec[:, i] for i, k in enumerate(("steps", "batch", "sum_context", "prefill_tokens", "prefill_pairs",
                                               "prefill_seqs", "first", "kv"))}  # fmt: skip
    rec["prefill_pairs"] = pairs
    steps = rec.pop("steps")
    starts = np.cumsum(steps) - steps
    offset = np.arange(int(steps.sum())) - np.repeat(starts, steps)
    arrays = {k: np.repeat(v, steps) for k, v in rec.items()}
    arrays["sum_context"] = arrays["sum_context"] + arrays["batch"] * offset
    runs = growth[:, 0] >= 0
    if runs.any():  # blocks a run's decodes have added by each of its iterations (phase histogram)
        table = np.where(runs[:, None], growth, 0)
        run_of = np.repeat(np.arange(len(steps)), steps)
        j = offset + 1
        arrays["kv"] = arrays["kv"] + (j // bs) * table[run_of, bs] + table[run_of, j % bs]
    start = None
    if times is not None:
        before = np.cumsum(times) - times
        start = np.repeat(t0, steps) + before - np.repeat(before[starts], steps)
    elif len(steps):
        times = np.asarray(
            time_fn(arrays["batch"], arrays["sum_context"], arrays["prefill_tokens"], arrays["prefill_pairs"],
                    arrays["prefill_seqs"], arrays["first"]), dtype=np.float64,
        )  # fmt: skip
    else:
        times = np.zeros(0)
    per_request = {}
    for i, name in enumerate(STATE_ROWS):
        out = np.full(n, -1 if name != "preempted" else 0, dtype=np.int64)
        out[runnable] = state[i]
        per_request[name] = out
    return ServingReplay(
        batch=arrays["batch"], sum_context=arrays["sum_context"], prefill_tokens=arrays["prefill_tokens"],
        prefill_pairs=arrays["prefill_pairs"], prefill_seqs=arrays["prefill_seqs"], first_tokens=arrays["first"],
        kv_used_tokens=arrays["kv"] * bs, time_s=times,
        start_s=np.cumsum(times) - times if start is None else start,
        admit_iteration=per_request["admit"], first_token_iteration=per_request["first"],
        finish_iteration=per_request["finish"], preemptions=per_request["preempted"],
        release_iteration=per_request["release"] if closed_loop else None,
    )  # fmt: skip
