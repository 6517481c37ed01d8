"""The vLLM replay loop of model/paged_replay.py compiled with numba: the same steps on arrays.

`paged_replay` runs this kernel when numba is installed (a dependency; where it is missing the Python loop,
model/paged_python.py, runs instead, and tests hold the two to identical results). It follows
model/paged_python.py step by step on the structures of model/paged_state.py.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from lamina_bench.model.paged_state import (
    ADMIT,
    ANCHOR,
    CLOCK,
    DONE,
    FIN,
    FINISH,
    FIRST,
    HLEN,
    NEXT,
    NEXTR,
    NFIELDS,
    NIT,
    NREC,
    NRUN,
    PARTIAL,
    PHASE,
    PREEMPTED,
    PREV,
    RELEASE,
    REMOTE,
    TAIL,
    USED,
    WHEAD,
    WLEN,
    B,
    G,
    K,
    O,
    P,
    S,
    cdiv,
    grow,
    heap_pop,
    heap_push,
    iteration_s,
    next_finish,
    run_add,
    run_remove,
    wpop,
    wpush,
)  # fmt: skip

# ---- bookkeeping --------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _start_decoding(st, R, hist, hk, hr, bs, r):
    p, g, c = R[r, P], R[r, G], st[CLOCK]
    R[r, ANCHOR] = c
    ph = (p + g - 1 - c) % bs
    R[r, PHASE] = ph
    hist[ph] += 1
    st[B] += 1
    st[S] += p + g
    R[r, FIN] = c + R[r, O] - 1 - g
    heap_push(st, hk, hr, R, R[r, FIN], r)


@njit(cache=True, inline="always")
def _done(st, R, wq, bs, closed_loop, m, r):
    st[USED] -= cdiv(R[r, P] + R[r, O] - 1, bs)
    run_remove(st, R, r)
    R[r, FINISH] = st[K]
    if closed_loop and st[NEXT] < m:
        R[st[NEXT], RELEASE] = st[K]
        wpush(st, wq, st[NEXT], False)
        st[NEXT] += 1


@njit(cache=True, inline="always")
def _preempt_tail(st, R, hist, wq, bs, clock):
    """Preempt the most recently admitted running request; returns 1 if it needed a block at `clock`."""
    r = st[TAIL]
    run_remove(st, R, r)
    needed = 0
    if r == st[PARTIAL]:
        st[USED] -= cdiv(R[r, DONE], bs)
        st[PARTIAL] = -1
    else:
        needed = 1 if (R[r, PHASE] + clock) % bs == 0 else 0
        g = R[r, G] + clock - R[r, ANCHOR]
        hist[R[r, PHASE]] -= 1
        st[B] -= 1
        st[S] -= R[r, P] + g
        R[r, FIN] = -1
        st[USED] -= cdiv(R[r, P] + g - 1, bs)
        R[r, G] = g
    R[r, DONE] = 0
    R[r, PREEMPTED] += 1
    wpush(st, wq, r, True)
    return needed


@njit(cache=True, inline="always")
def _admit_blocks(R, r, budget, bs, chunked):
    if R[r, REMOTE]:
        return cdiv(R[r, P], bs)
    total = R[r, P] + R[r, G]
    return cdiv(min(total, budget) if chunked else total, bs)


@njit(cache=True, inline="always")
def _head_admissible(st, R, wq, budget, bs, chunked, cap, max_seqs):
    if st[WLEN] == 0 or budget <= 0 or st[NRUN] >= max_seqs:
        return False
    return _admit_blocks(R, wq[st[WHEAD]], budget, bs, chunked) <= cap - st[USED]


@njit(cache=True, inline="always")
def _finish_decoders(st, R, hist, wq, hk, hr, bs, closed_loop, m, clock):
    """Decoders whose last decode was at `clock` leave."""
    if next_finish(st, hk, hr, R) != clock:
        return
    while st[HLEN] > 0 and hk[0] == clock:
        r = hr[0]
        heap_pop(st, hk, hr)
        if R[r, FIN] == clock:
            hist[R[r, PHASE]] -= 1
            st[B] -= 1
            st[S] -= R[r, P] + R[r, O]
            R[r, FIN] = -1
            R[r, G] = R[r, O]
            _done(st, R, wq, bs, closed_loop, m, r)


# ---- one iteration in full ----------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _continue_partial(st, R, hist, wq, bs, chunked, cap, budget, clock, work, completed):
    """The request in the middle of its prefill computes its next chunk; True if it preempted itself."""
    r = st[PARTIAL]
    total, done = R[r, P] + R[r, G], R[r, DONE]
    c = min(total - done, budget)
    grow = cdiv(done + c, bs) - cdiv(done, bs) if chunked else 0
    if grow > cap - st[USED]:  # it is the most recent request: it preempts itself
        _preempt_tail(st, R, hist, wq, bs, clock)
        return True
    st[USED] += grow
    work[0], work[1], work[2] = c, c * done + c * (c + 1) // 2, 1
    R[r, DONE] = done + c
    if done + c == total:
        completed[work[3]] = r
        work[3] += 1
        st[PARTIAL] = -1
    return False


@njit(cache=True, inline="always")
def _admit(st, R, wq, bs, chunked, cap, max_seqs, budget, work, completed):
    """Admit from the queue head while the budget, max_num_seqs and the free blocks allow."""
    while st[WLEN] > 0 and budget > 0 and st[NRUN] < max_seqs:
        r = wq[st[WHEAD]]
        if R[r, REMOTE]:  # its KV has arrived: its prompt's blocks, no budget, its first token sampled
            blocks = cdiv(R[r, P], bs)
            if blocks > cap - st[USED]:
                break
            wpop(st, wq)
            run_add(st, R, r)
            st[USED] += blocks
            R[r, ADMIT], R[r, DONE], R[r, REMOTE] = st[K], R[r, P], 0
            completed[work[3]] = r
            work[3] += 1
            continue
        total = R[r, P] + R[r, G]
        c = total if total <= budget else budget
        blocks = cdiv(c if chunked else total, bs)
        if blocks > cap - st[USED]:
            break
        wpop(st, wq)
        run_add(st, R, r)
        st[USED] += blocks
        if R[r, ADMIT] < 0:
            R[r, ADMIT] = st[K]
        R[r, DONE] = c
        work[0] += c
        work[1] += c * (c + 1) // 2
        work[2] += 1
        budget -= c
        if c == total:
            completed[work[3]] = r
            work[3] += 1
        else:
            st[PARTIAL] = r


@njit(cache=True, inline="always")
def _arrivals(st, a, wq, t):
    """Requests that have arrived by `t` join the queue (arrivals are sorted: a scan from the next one,
    the Python loop's bisect_right from it)."""
    m = len(a)
    while st[NEXT] < m and a[st[NEXT]] <= t:
        wpush(st, wq, st[NEXT], False)
        st[NEXT] += 1


# ---- the loop ----------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _run_length(st, hist, prefix, bs, cap, f):
    """Decode iterations that can run before the next event (`prefix`: new blocks over the next bs decodes)."""
    c, b = st[CLOCK], st[B]
    rr = (-c) % bs  # decoders needing a block at clock c + j are those of phase (rr - j) mod bs
    for j in range(bs):
        prefix[j + 1] = prefix[j] + hist[(rr - j) % bs]
    cycles, rest = divmod(cap - st[USED], b)
    short = cycles * bs + np.searchsorted(prefix, rest, side="right")
    return min(f - c + 1, short - 1)  # (the decode short of blocks is run in full)


@njit(cache=True, inline="always")
def _run_times(st, tab, times, steps, t, stop):
    """Times of up to `steps` decodes appended to `times` (returned, maybe grown), ending with the first that
    ends at or after `stop`: ServingTimeTable.decode_run, the knot interval walked forward as S grows."""
    offsets, ks, kt = tab
    b = st[B]
    lo, hi = offsets[b], offsets[b + 1]
    j = lo + np.searchsorted(ks[lo:hi], st[S], side="right")
    for i in range(steps):
        s = st[S] + b * i
        while j < hi and ks[j] <= s:
            j += 1
        if j == hi and s == ks[hi - 1]:
            x = kt[hi - 1]
        elif j <= lo or j >= hi:
            raise ValueError("summed context outside the time table")
        else:  # decode_s, the same operations
            x = kt[j - 1] + (kt[j] - kt[j - 1]) * (s - ks[j - 1]) / (ks[j] - ks[j - 1])
        if st[NIT] >= len(times):
            times = grow(times)
        times[st[NIT]] = x
        st[NIT] += 1
        t += x
        if t >= stop:
            break
    return times


@njit(cache=True, inline="always")
def _schedule(st, R, hist, wq, bs, chunked, cap, max_seqs, budget, work, completed):
    """The scheduling of one iteration in full (paged_python.PagedLoop._step up to its record): returns
    (decodes, preempted, batch, context); the prefill work is in `work`, the completed prefills in
    `completed`."""
    clock = st[CLOCK]
    decodes = chunked or not (
        st[PARTIAL] >= 0 or _head_admissible(st, R, wq, budget, bs, chunked, cap, max_seqs)
    )
    preempted = False
    batch = context = 0
    if decodes and st[B] > 0:  # every decoder writes a token; those with a full last block need one
        need = hist[(-clock) % bs]
        while need > cap - st[USED]:
            need -= _preempt_tail(st, R, hist, wq, bs, clock)
            preempted = True
        st[USED] += need
        batch, context = st[B], st[S]
    left = budget - batch
    work[:] = 0
    if chunked or not decodes:
        if st[PARTIAL] >= 0 and left > 0:
            preempted |= _continue_partial(st, R, hist, wq, bs, chunked, cap, left, clock, work, completed)
        if not preempted:
            _admit(st, R, wq, bs, chunked, cap, max_seqs, left - work[0], work, completed)
    for i in range(work[3]):  # the prefill's token: the first one, or the next after a preemption
        r = completed[i]
        R[r, G] += 1
        if R[r, FIRST] < 0:
            R[r, FIRST] = st[K]
    return decodes, preempted, batch, context


@njit(cache=True, inline="always")
def _after(st, R, hist, wq, hk, hr, bs, closed_loop, m, decodes, completed, n_completed):
    """The end of an iteration in full: the decode clock moves, completed prefills finish or decode, and
    decoders whose last token this was leave."""
    clock = st[CLOCK]
    if decodes:
        st[S] += st[B]
        st[CLOCK] += 1
    for i in range(n_completed):
        r = completed[i]
        if R[r, G] == R[r, O]:
            _done(st, R, wq, bs, closed_loop, m, r)
        else:
            _start_decoding(st, R, hist, hk, hr, bs, r)
    if decodes and st[HLEN] > 0 and hk[0] <= clock:
        _finish_decoders(st, R, hist, wq, hk, hr, bs, closed_loop, m, clock)
    st[K] += 1


@njit(cache=True)
def replay_kernel(p, o, a, knobs, tab, line, layer, head):
    """paged_python.PagedLoop.run (module doc). `knobs` = (capacity blocks, block size, budget, max seqs,
    chunked, closed loop, clients, prefilled, timed); `tab`, `line`, `layer`, `head`: the time table's
    arrays (`timed` = 0: unused; the times are then computed after the loop).

    Returns (records [n, 8] int64, pairs [n], growth [n, bs + 1] (runs; -1 in column 0 for single
    iterations), times [iterations], record start times [n], per-request state R [requests, 15])."""
    cap, bs, budget, max_seqs, chunked, closed_loop, clients, prefilled, timed = knobs
    m = len(p)
    follow = timed and not closed_loop
    st = np.zeros(14, dtype=np.int64)
    st[PARTIAL], st[TAIL] = -1, -1
    R = np.zeros((max(m, 1), 15), dtype=np.int64)
    R[:m, P], R[:m, O] = p, o
    for col in (FIN, ADMIT, FIRST, FINISH, RELEASE, PREV, NEXTR):
        R[:, col] = -1
    R[:, REMOTE] = 1 if prefilled else 0
    hist = np.zeros(bs, dtype=np.int64)
    wq, completed = np.zeros(max(m, 1), dtype=np.int64), np.zeros(max(m, 1), dtype=np.int64)
    hk, hr = np.zeros(2 * m + 64, dtype=np.int64), np.zeros(2 * m + 64, dtype=np.int64)
    rec, pairs, t0 = np.zeros((1024, NFIELDS), dtype=np.int64), np.zeros(1024), np.zeros(1024)
    growth = np.full((1024, bs + 1), -1, dtype=np.int64)
    times = np.zeros(4096)
    work = np.zeros(4, dtype=np.int64)  # prefill tokens, pairs, requests with a chunk, completed prefills
    prefix = np.zeros(bs + 1, dtype=np.int64)
    st[NEXT] = min(clients, m) if closed_loop else (0 if follow else m)
    for r in range(st[NEXT]):
        wpush(st, wq, r, False)
    t = 0.0
    full = True
    while True:
        if follow:
            _arrivals(st, a, wq, t)
        if st[NRUN] == 0 and st[WLEN] == 0:
            if st[NEXT] >= m:
                break
            t = max(t, a[st[NEXT]])  # idle until the next arrival
            continue
        if st[NREC] + 1 >= rec.shape[0]:
            rec, pairs, growth, t0 = grow(rec), grow(pairs), grow(growth), grow(t0)
            growth[st[NREC] + 1 :, 0] = -1
        n = st[NREC]
        quiet = st[PARTIAL] < 0 and not _head_admissible(
            st, R, wq, budget - (st[B] if chunked else 0), bs, chunked, cap, max_seqs
        )
        f = next_finish(st, hk, hr, R) if quiet and not full else -1
        steps = _run_length(st, hist, prefix, bs, cap, f) if f >= 0 else 0
        if steps > 0:  # a run of decodes when nothing else can happen
            b = st[B]
            if timed:
                stop = np.inf
                if follow and st[WLEN] == 0 and st[NEXT] < m and a[st[NEXT]] > t:
                    stop = a[st[NEXT]]
                first = st[NIT]
                times = _run_times(st, tab, times, steps, t, stop)
                steps = st[NIT] - first
                total = 0.0  # one addition after the other, as the Python loop does
                for i in range(first, st[NIT]):
                    total += times[i]
                t0[n] = t
                t += total
            growth[n] = prefix
            rec[n, 0], rec[n, 1], rec[n, 2], rec[n, 7] = steps, b, st[S], st[USED]
            st[NREC] += 1
            st[USED] += (steps // bs) * b + prefix[steps % bs]
            st[S] += b * steps
            st[CLOCK] += steps
            st[K] += steps - 1  # finishes belong to the run's last iteration
            _finish_decoders(st, R, hist, wq, hk, hr, bs, closed_loop, m, st[CLOCK] - 1)
            st[K] += 1
            full = False
            continue
        if follow:  # one iteration in full
            _arrivals(st, a, wq, t)
        decodes, full, batch, context = _schedule(st, R, hist, wq, bs, chunked, cap, max_seqs, budget, work,
                                                  completed)  # fmt: skip
        rec[n, 0], rec[n, 1], rec[n, 2], rec[n, 3] = 1, batch, context, work[0]
        rec[n, 5], rec[n, 6], rec[n, 7] = work[2], work[3], st[USED]
        pairs[n] = float(work[1])
        st[NREC] += 1
        if timed:
            x = iteration_s(tab, line, layer, head, batch, context, work[0], float(work[1]), work[2], work[3])
            if st[NIT] >= len(times):
                times = grow(times)
            times[st[NIT]] = x
            st[NIT] += 1
            t0[n] = t
            t += x
        _after(st, R, hist, wq, hk, hr, bs, closed_loop, m, decodes, completed, work[3])
    n = st[NREC]
    return rec[:n], pairs[:n], growth[:n], times[: st[NIT]], t0[:n], R[:m]


@njit(cache=True)
def expand(rec, pairs, growth, times, t0, bs, timed):
    """paged_replay._expand in compiled code, the same operations in the same order: (batch, sum_context,
    prefill_tokens, prefill_pairs, prefill_seqs, first, kv blocks, start) per iteration."""
    n = 0
    for r in range(rec.shape[0]):
        n += rec[r, 0]
    batch, context, tokens = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
    seqs, first, kv = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
    pair, start = np.empty(n), np.zeros(n)
    i, cum = 0, 0.0
    for r in range(rec.shape[0]):
        run = growth[r, 0] >= 0
        b0 = 0.0
        for k in range(rec[r, 0]):
            batch[i], context[i], tokens[i] = rec[r, 1], rec[r, 2] + rec[r, 1] * k, rec[r, 3]
            pair[i], seqs[i], first[i] = pairs[r], rec[r, 5], rec[r, 6]
            j = k + 1
            kv[i] = rec[r, 7] + (j // bs) * growth[r, bs] + growth[r, j % bs] if run else rec[r, 7]
            if timed:  # numpy's cumsum adds one after the other too
                cum += times[i]
                before = cum - times[i]
                if k == 0:
                    b0 = before
                start[i] = t0[r] + before - b0
            i += 1
    return batch, context, tokens, pair, seqs, first, kv, start
