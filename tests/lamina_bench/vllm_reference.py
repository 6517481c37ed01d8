"""A naive vLLM V1 scheduler for the tests: one Python step per iteration and per request, obviously
following vllm/v1/core/sched/scheduler.py (running requests in admission order, each allocating its
blocks and preempting the most recent running request when a block is missing; then the waiting queue).
Slow; the fast replay (model/paged_replay.py) must match it exactly."""

from __future__ import annotations

from collections import deque

import numpy as np


def _blocks(tokens: int, bs: int) -> int:
    return -(-tokens // bs)


def naive_vllm(
    p, o, arrival, cap_blocks, bs, max_seqs, budget, chunked, time_fn, follow=False, concurrency=None
):
    """Rows (batch, context, prefill tokens, pairs, prefill seqs, first tokens, blocks used, start, time)
    per iteration and per-request (admit, first token, finish, preemptions, release) iterations."""
    m = len(p)
    gen, computed, held = [0] * m, [0] * m, [0] * m
    prefilled = [False] * m  # prefill of the current admission complete (the request decodes)
    admit, first, finish, npre, release = [-1] * m, [-1] * m, [-1] * m, [0] * m, [-1] * m
    running: list[int] = []
    waiting: deque[int] = deque()
    nxt = min(concurrency, m) if concurrency is not None else (0 if follow else m)  # requests sent so far
    waiting.extend(range(nxt))
    free, t, k, rows = cap_blocks, 0.0, 0, []

    def admit_blocks(r: int, left: int) -> int:  # separate prefill takes the whole prompt's blocks
        return _blocks(min(p[r] + gen[r], left) if chunked else p[r] + gen[r], bs)

    def head_ok(left: int) -> bool:
        if not waiting or left <= 0 or len(running) >= max_seqs:
            return False
        return admit_blocks(waiting[0], left) <= free

    while True:
        if follow and concurrency is None:
            while nxt < m and arrival[nxt] <= t:
                waiting.append(nxt)
                nxt += 1
        if not running and not waiting:
            if nxt >= m:
                break
            t = max(t, arrival[nxt])
            continue
        partial = any(not prefilled[r] for r in running)
        decode_iter = chunked or not (partial or head_ok(budget))
        prefill_ok = chunked or not decode_iter
        batch = context = tokens = pairs = seqs = firsts = 0
        left, preempted, i = budget, False, 0
        while i < len(running) and left > 0:
            r = running[i]
            if prefilled[r] and not decode_iter or not prefilled[r] and not prefill_ok:
                i += 1
                continue
            c = 1 if prefilled[r] else min(p[r] + gen[r] - computed[r], left)
            need = max(0, _blocks(computed[r] + c, bs) - held[r])
            while need > free:
                v = running.pop()
                free += held[v]
                held[v] = computed[v] = 0
                prefilled[v] = False
                npre[v] += 1
                waiting.appendleft(v)
                preempted = True
                if v == r:
                    break
            if r not in running:
                break
            free -= need
            held[r] += need
            if prefilled[r]:
                batch, context = batch + 1, context + computed[r] + 1
            else:
                tokens, pairs, seqs = tokens + c, pairs + c * computed[r] + c * (c + 1) // 2, seqs + 1
            computed[r] += c
            left -= c
            if computed[r] == p[r] + gen[r]:  # a decode, or a prefill that completes: one token sampled
                if not prefilled[r]:
                    firsts += 1
                    first[r] = k if first[r] < 0 else first[r]
                prefilled[r] = True
                gen[r] += 1
            i += 1
        if prefill_ok and not preempted:
            while head_ok(left):
                r = waiting.popleft()
                total = p[r] + gen[r]
                c = min(total, left)
                running.append(r)
                held[r] = admit_blocks(r, left)
                free -= held[r]
                computed[r] = c
                admit[r] = k if admit[r] < 0 else admit[r]
                tokens, pairs, seqs, left = tokens + c, pairs + c * (c + 1) // 2, seqs + 1, left - c
                if c == total:
                    firsts += 1
                    first[r] = k if first[r] < 0 else first[r]
                    prefilled[r] = True
                    gen[r] += 1
        dt = float(np.atleast_1d(time_fn(batch, context, tokens, float(pairs), seqs, firsts))[0])
        rows.append((batch, context, tokens, pairs, seqs, firsts, cap_blocks - free, t, dt))
        t += dt
        for r in list(running):
            if gen[r] == o[r]:
                running.remove(r)
                free += held[r]
                held[r] = 0
                finish[r] = k
                if concurrency is not None and nxt < m:
                    release[nxt] = k
                    waiting.append(nxt)
                    nxt += 1
        k += 1
    return np.array(rows, dtype=float).reshape(-1, 9), admit, first, finish, npre, release
