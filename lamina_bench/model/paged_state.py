"""Data structures and time lookups of the compiled replay loop (model/paged_kernel.py), on plain arrays.

scalar state       `st` (int64), by the index names below
per-request state  `R` (int64, one row per request, the column names below)
running requests   a doubly linked list through R's PREV / NEXTR columns, in admission order (append,
                   unlink, the most recent at `st[TAIL]`)
waiting queue      a ring buffer `wq` (append, appendleft, popleft)
finishing decoders a binary min-heap of (decode clock, request) in `hk`, `hr`; an entry whose request no
                   longer finishes at that clock (it was preempted) is skipped, as the Python loop's
                   buckets skip it
times              the tabulated model's arrays (model/serving_time.py), read with the same operations
                   in the same order as `ServingTimeTable`
"""

from __future__ import annotations

import numpy as np
from numba import njit

# scalar state, by index into `st` (int64)
B, S, USED, K, CLOCK, NEXT, PARTIAL, NRUN, TAIL, WHEAD, WLEN, HLEN, NREC, NIT = range(14)
# per-request state, by column of `R` (int64, one row per request)
P, O, G, ANCHOR, PHASE, DONE, FIN, ADMIT, FIRST, FINISH, PREEMPTED, REMOTE, RELEASE, PREV, NEXTR = range(15)
NFIELDS = 8  # steps, batch, sum_context, prefill_tokens, prefill_pairs (in `pairs`), seqs, first, kv


@njit(cache=True, inline="always")
def cdiv(a, b):
    return -(-a // b)


# ---- queues -------------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def wpush(st, wq, r, front):
    n = len(wq)
    if front:
        st[WHEAD] = (st[WHEAD] - 1) % n
        wq[st[WHEAD]] = r
    else:
        wq[(st[WHEAD] + st[WLEN]) % n] = r
    st[WLEN] += 1


@njit(cache=True, inline="always")
def wpop(st, wq):
    r = wq[st[WHEAD]]
    st[WHEAD] = (st[WHEAD] + 1) % len(wq)
    st[WLEN] -= 1
    return r


@njit(cache=True, inline="always")
def run_add(st, R, r):
    R[r, PREV], R[r, NEXTR] = st[TAIL], -1
    if st[TAIL] >= 0:
        R[st[TAIL], NEXTR] = r
    st[TAIL] = r
    st[NRUN] += 1


@njit(cache=True, inline="always")
def run_remove(st, R, r):
    prev, nxt = R[r, PREV], R[r, NEXTR]
    if prev >= 0:
        R[prev, NEXTR] = nxt
    if nxt >= 0:
        R[nxt, PREV] = prev
    else:
        st[TAIL] = prev
    st[NRUN] -= 1


@njit(cache=True, inline="always")
def sift_up(hk, hr, i, key, r):
    while i > 0:
        parent = (i - 1) // 2
        if hk[parent] <= key:
            break
        hk[i], hr[i] = hk[parent], hr[parent]
        i = parent
    hk[i], hr[i] = key, r


@njit(cache=True, inline="always")
def heap_push(st, hk, hr, R, key, r):
    if st[HLEN] == len(hk):  # full: keep the entries of decoders still finishing at their clock, re-heap
        n = 0
        for i in range(st[HLEN]):
            if R[hr[i], FIN] == hk[i]:
                k, q = hk[i], hr[i]
                sift_up(hk, hr, n, k, q)
                n += 1
        st[HLEN] = n
        if n == len(hk):
            raise RuntimeError("finish heap full of live entries")
    st[HLEN] += 1
    sift_up(hk, hr, st[HLEN] - 1, key, r)


@njit(cache=True, inline="always")
def heap_pop(st, hk, hr):
    st[HLEN] -= 1
    n = st[HLEN]
    key, r = hk[n], hr[n]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and hk[c + 1] < hk[c]:
            c += 1
        if hk[c] >= key:
            break
        hk[i], hr[i] = hk[c], hr[c]
        i = c
    if n > 0:
        hk[i], hr[i] = key, r


@njit(cache=True, inline="always")
def next_finish(st, hk, hr, R):
    """The next decode clock at which a decoder finishes; -1 if none."""
    while st[HLEN] > 0 and R[hr[0], FIN] != hk[0]:  # the decoder was preempted since
        heap_pop(st, hk, hr)
    return hk[0] if st[HLEN] > 0 else -1


# ---- the tabulated time (model/serving_time.py, ServingTimeTable) ---------------------------------------


@njit(cache=True, inline="always")
def decode_s(offsets, ks, kt, b, s):
    lo, hi = offsets[b], offsets[b + 1]
    j = lo + np.searchsorted(ks[lo:hi], s, side="right")
    if j == hi and s == ks[hi - 1]:
        return kt[hi - 1]
    if j <= lo or j >= hi:
        raise ValueError("summed context outside the time table")
    s0 = ks[j - 1]
    return kt[j - 1] + (kt[j] - kt[j - 1]) * (s - s0) / (ks[j] - s0)


@njit(cache=True, inline="always")
def iteration_s(tab, line, layer, head, b, s, tokens, pairs, seqs, first):
    """ServingTimeTable.__call__; `tab` = (offsets, S, time), `line` = (prefill line, lamina, L, KV s per
    token, latency, CPU s per request)."""
    offsets, ks, kt = tab
    fixed, per_token, per_pair, flops_per_pair, floor, lamina, L, kv_s, latency_s, cpu_s = line
    t = decode_s(offsets, ks, kt, b, s)
    if tokens:
        attn = L * max(fixed + max(per_token * tokens + per_pair * pairs, flops_per_pair * pairs), floor)
        if lamina == 0.0:
            extra = L * (layer[b + tokens] - layer[b]) + head[b + first] - head[b] + attn
        else:
            compute = L * layer[tokens] + head[first] + attn
            transfer = tokens * kv_s
            extra = max(compute, transfer) + transfer / L + latency_s
        t += extra
    return t + cpu_s * seqs


# ---- growable arrays ----------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def grow(x):
    out = np.zeros((2 * x.shape[0],) + x.shape[1:], dtype=x.dtype)
    out[: x.shape[0]] = x
    return out
