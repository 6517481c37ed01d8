"""The vLLM replay loop in plain Python (model/paged_replay.py describes what it does).

The reference for the compiled loop (model/paged_kernel.py), and what runs where numba is not installed or
the time function is not a tabulated model (model/serving_time.py).
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from itertools import accumulate

import numpy as np

_FIELDS = ("steps", "batch", "sum_context", "prefill_tokens", "prefill_pairs", "prefill_seqs", "first", "kv")
STATE_ROWS = ("admit", "first", "finish", "preempted", "release")  # per-request results, in this order


class PagedLoop:
    """State of one replay (module doc). Requests are indexed 0..m-1 in trace order."""

    def __init__(self, p, o, a, capacity_blocks, policy, max_batch, time_fn, concurrency, prefilled=False):
        self.p, self.o, self.a, self.m = p, o, a, len(p)
        self.bs, self.cap = policy.block_size, capacity_blocks
        self.budget = policy.max_num_batched_tokens
        self.max_seqs = min(policy.max_num_seqs, max_batch or policy.max_num_seqs)
        self.chunked = policy.prefill == "chunked"
        self.time_fn = time_fn  # None: times computed once at the end
        m = self.m
        self.g = [0] * m  # generated tokens (at the decode anchor for decoders)
        self.anchor = [0] * m  # decode clock at which g was counted
        self.phase = [0] * m
        self.done = [0] * m  # tokens prefilled in the current admission
        self.fin_clock = [-1] * m  # decode clock of the last decode; -1 = not decoding
        self.admit, self.first, self.finish = [-1] * m, [-1] * m, [-1] * m
        self.preempted = [0] * m
        self.remote = [prefilled] * m  # arrives with its prompt's KV and first token (prefill pool)
        self.release = [-1] * m
        self.running: dict[int, None] = {}  # admission order; popitem() gives the most recent
        self.waiting: deque[int] = deque()
        self.partial = -1  # the request in the middle of a chunked prefill
        self.hist = [0] * self.bs  # decoders per phase
        self.heap: list[int] = []  # decode clocks at which decoders finish
        self.buckets: dict[int, list[int]] = {}  # finish clock -> decoders (some may have been preempted)
        self.live: dict[int, int] = {}  # finish clock -> decoders of the bucket still decoding
        self.B = self.S = self.used = 0  # decoders, keys they read at the next decode, blocks in use
        self.k = self.clock = 0  # iteration, decode clock (the next decode iteration's)
        self.t = 0.0
        self.closed_loop = concurrency is not None
        self.follow = time_fn is not None and not self.closed_loop
        self.next_req = min(concurrency, m) if self.closed_loop else (0 if self.follow else m)
        self.waiting.extend(range(self.next_req))
        self.rec: list[tuple] = []  # one tuple of _FIELDS per run of iterations
        self.growth: dict[int, list[int]] = {}  # record -> new blocks after 0..bs decodes (runs only)
        self.times: list[np.ndarray] = []
        self.t0: list[float] = []  # start time of each record (following arrivals)

    # ---- bookkeeping ------------------------------------------------------------------------------

    def _arrivals(self) -> None:
        if self.follow and self.next_req < self.m:
            j = bisect.bisect_right(self.a, self.t, lo=self.next_req)
            self.waiting.extend(range(self.next_req, j))
            self.next_req = j

    def _start_decoding(self, r: int) -> None:
        """`r` finished a prefill (its g counts the token just sampled); it decodes from the next decode."""
        p, g, c = self.p[r], self.g[r], self.clock
        self.anchor[r] = c
        self.phase[r] = ph = (p + g - 1 - c) % self.bs
        self.hist[ph] += 1
        self.B += 1
        self.S += p + g
        self.fin_clock[r] = f = c + self.o[r] - 1 - g
        if f in self.buckets:
            self.buckets[f].append(r)
            self.live[f] += 1
        else:
            self.buckets[f] = [r]
            self.live[f] = 1
            heapq.heappush(self.heap, f)

    def _done(self, r: int) -> None:
        """`r` has all its tokens: free its blocks, and in a closed loop send the next request."""
        self.used -= -(-(self.p[r] + self.o[r] - 1) // self.bs)
        del self.running[r]
        self.finish[r] = self.k
        if self.closed_loop and self.next_req < self.m:
            self.release[self.next_req] = self.k
            self.waiting.append(self.next_req)
            self.next_req += 1

    def _preempt_tail(self, clock: int) -> int:
        """Preempt the most recently admitted running request; returns 1 if it needed a block at `clock`."""
        r, _ = self.running.popitem()
        bs, needed = self.bs, 0
        if r == self.partial:  # (chunked only: a separate prefill runs no decodes that could preempt)
            self.used -= -(-self.done[r] // bs)
            self.partial = -1
        else:  # a decoder: it has generated g tokens and holds the KV of p + g - 1
            needed = int((self.phase[r] + clock) % bs == 0)
            g = self.g[r] + clock - self.anchor[r]
            self.hist[self.phase[r]] -= 1
            self.B -= 1
            self.S -= self.p[r] + g
            self.live[self.fin_clock[r]] -= 1
            self.fin_clock[r] = -1
            self.used -= -(-(self.p[r] + g - 1) // bs)
            self.g[r] = g
        self.done[r] = 0
        self.preempted[r] += 1
        self.waiting.appendleft(r)
        return needed

    # ---- one iteration with everything that can happen ------------------------------------------------

    def _admit_blocks(self, r: int, budget: int) -> int:
        """Blocks request `r` takes when admitted: its first chunk's (chunked) or its whole prompt's."""
        total = self.p[r] + self.g[r]
        if self.remote[r]:
            return -(-self.p[r] // self.bs)
        return -(-(min(total, budget) if self.chunked else total) // self.bs)

    def _head_admissible(self, budget: int) -> bool:
        if not self.waiting or budget <= 0 or len(self.running) >= self.max_seqs:
            return False
        return self._admit_blocks(self.waiting[0], budget) <= self.cap - self.used

    def _step(self) -> bool:
        """Run iteration k in full; True when it preempted (the next iteration is then run in full too)."""
        if self.follow:
            self._arrivals()
        chunked, clock = self.chunked, self.clock
        decodes = chunked or not (self.partial >= 0 or self._head_admissible(self.budget))
        preempted = False
        batch = context = 0
        if decodes and self.B:  # every decoder writes a token; those with a full last block need one
            need = self.hist[-clock % self.bs]
            while need > self.cap - self.used:
                need -= self._preempt_tail(clock)
                preempted = True
            self.used += need
            batch, context = self.B, self.S
        budget = self.budget - batch
        work = [0, 0, 0]  # prefill tokens, (query, key) pairs, requests with a chunk
        completed: list[int] = []
        if chunked or not decodes:
            if self.partial >= 0 and budget > 0:
                preempted |= self._continue_partial(budget, clock, work, completed)
            if not preempted:
                self._admit(budget - work[0], work, completed)
        k, g, first = self.k, self.g, self.first
        for r in completed:  # the prefill's token: the first one, or the next after a preemption
            g[r] += 1
            if first[r] < 0:
                first[r] = k
        self._record(1, batch, context, work[0], work[1], work[2], len(completed))
        if decodes:
            self.S += self.B
            self.clock += 1
        for r in completed:
            if g[r] == self.o[r]:
                self._done(r)
            else:
                self._start_decoding(r)
        if decodes and self.heap and self.heap[0] <= clock:
            self._finish_decoders(clock)
        self.k += 1
        return preempted

    def _continue_partial(self, budget: int, clock: int, work: list[int], completed: list[int]) -> bool:
        """The request in the middle of its prefill computes its next chunk; True if it preempted itself."""
        r, bs = self.partial, self.bs
        total, done = self.p[r] + self.g[r], self.done[r]
        c = min(total - done, budget)
        grow = (
            -(-(done + c) // bs) + (-done // bs) if self.chunked else 0
        )  # ceil((done+c)/bs) - ceil(done/bs)
        if grow > self.cap - self.used:  # it is the most recent request: it preempts itself
            self._preempt_tail(clock)
            return True
        self.used += grow
        work[0], work[1], work[2] = c, c * done + c * (c + 1) // 2, 1
        self.done[r] = done + c
        if done + c == total:
            completed.append(r)
            self.partial = -1
        return False

    def _admit(self, budget: int, work: list[int], completed: list[int]) -> None:
        """Admit from the queue head while the budget, max_num_seqs and the free blocks allow (hot: the
        checks of `_head_admissible` are inlined)."""
        waiting, running, p, g, admit, done, remote = (
            self.waiting,
            self.running,
            self.p,
            self.g,
            self.admit,
            self.done,
            self.remote,
        )
        bs, chunked, cap, max_seqs, used, k = (
            self.bs,
            self.chunked,
            self.cap,
            self.max_seqs,
            self.used,
            self.k,
        )
        tokens, pairs, seqs = work
        while waiting and budget > 0 and len(running) < max_seqs:
            r = waiting[0]
            if remote[r]:  # its KV has arrived: its prompt's blocks, no budget, its first token sampled
                blocks = -(-p[r] // bs)
                if blocks > cap - used:
                    break
                waiting.popleft()
                running[r] = None
                used += blocks
                admit[r], done[r], remote[r] = k, p[r], False
                completed.append(r)
                continue
            total = p[r] + g[r]
            c = total if total <= budget else budget
            blocks = -(-(c if chunked else total) // bs)
            if blocks > cap - used:
                break
            waiting.popleft()
            running[r] = None
            used += blocks
            if admit[r] < 0:
                admit[r] = k
            done[r] = c
            tokens, pairs, seqs, budget = tokens + c, pairs + c * (c + 1) // 2, seqs + 1, budget - c
            if c == total:
                completed.append(r)
            else:
                self.partial = r
        self.used = used
        work[0], work[1], work[2] = tokens, pairs, seqs

    def _finish_decoders(self, clock: int) -> None:
        """Decoders whose last decode was at `clock` leave (the decode clock has moved past it)."""
        if self._next_finish() != clock:
            return
        heapq.heappop(self.heap)
        del self.live[clock]
        o, p, fin = self.o, self.p, self.fin_clock
        for r in self.buckets.pop(clock):
            if fin[r] == clock:
                self.hist[self.phase[r]] -= 1
                self.B -= 1
                self.S -= p[r] + o[r]
                fin[r] = -1
                self.g[r] = o[r]
                self._done(r)

    # ---- runs of plain decode iterations -------------------------------------------------------------

    def _next_finish(self) -> int | None:
        heap, live = self.heap, self.live
        while heap and not live[heap[0]]:  # every decoder of the bucket was preempted
            f = heapq.heappop(heap)
            del live[f], self.buckets[f]
        return heap[0] if heap else None

    def _decode_run(self) -> bool:
        """Record the decode iterations up to the next event; False when there is nothing to run."""
        f = self._next_finish()
        if f is None:
            return False
        bs, c, hist, b = self.bs, self.clock, self.hist, self.B
        r = -c % bs  # decoders needing a block at clock c + j are those of phase (r - j) mod bs
        prefix = list(accumulate(hist[r::-1] + hist[:r:-1], initial=0))  # new blocks over the next bs decodes
        cycles, rest = divmod(self.cap - self.used, b)
        short = cycles * bs + bisect.bisect_right(prefix, rest)  # the first decode short of blocks
        steps = min(f - c + 1, short - 1)  # (that one is run in full)
        if steps <= 0:
            return False
        times = None
        until = getattr(self.time_fn, "decode_run", None)
        if until is not None:  # the time model cuts the run itself (model/serving_time.py)
            stop = None
            if self.follow and not self.waiting and self.next_req < self.m and self.a[self.next_req] > self.t:
                stop = self.a[self.next_req]
            times = until(b, self.S, steps, self.t, stop)
            steps = len(times)
        elif self.time_fn is not None:
            times = self.time_fn(b, self.S + b * np.arange(steps), 0, 0.0, 0, 0)
            times = np.broadcast_to(np.asarray(times, dtype=float), (steps,))
            if self.follow and not self.waiting and self.next_req < self.m and self.a[self.next_req] > self.t:
                cut = int(np.searchsorted(self.t + np.cumsum(times), self.a[self.next_req], side="left")) + 1
                times, steps = times[:cut], min(steps, cut)
        self.growth[len(self.rec)] = prefix
        self._record(steps, b, self.S, 0, 0, 0, 0, times)  # KV recorded before the run grows it
        self.used += (steps // bs) * b + prefix[steps % bs]
        self.S += b * steps
        self.clock += steps
        self.k += steps - 1  # finishes belong to the run's last iteration
        self._finish_decoders(self.clock - 1)
        self.k += 1
        return True

    def _record(self, steps, batch, context, tokens, pairs, seqs, first, times=None) -> None:
        self.rec.append((steps, batch, context, tokens, pairs, seqs, first, self.used))
        if self.time_fn is not None:
            self._time(batch, context, tokens, pairs, seqs, first, times)

    def _time(self, batch, context, tokens, pairs, seqs, first, times) -> None:
        """Times of the run just recorded, when following arrivals (the clock must advance)."""
        if times is None:
            times = self.time_fn(batch, context, tokens, float(pairs), seqs, first)
            times = [times] if isinstance(times, float) else np.atleast_1d(times).astype(float)
        self.t0.append(self.t)
        self.times.append(times)
        total = 0.0  # one addition after the other, as the compiled loop does
        for x in times:
            total += float(x)
        self.t += total

    # ---- the loop -------------------------------------------------------------------------------------

    def run(self) -> None:
        full = True
        while True:
            if self.follow:
                self._arrivals()
            if not self.running and not self.waiting:
                if self.next_req >= self.m:
                    return
                self.t = max(self.t, self.a[self.next_req])  # idle until the next arrival
                continue
            quiet = self.partial < 0 and not self._head_admissible(
                self.budget - (self.B if self.chunked else 0)
            )
            # a run of decodes when nothing else can happen, else one iteration in full
            full = self._step() if full or not quiet or not self._decode_run() else False

    def arrays(self) -> tuple:
        """What `paged_kernel.replay_kernel` returns, from this loop's state."""
        m = self.m
        table = np.array(self.rec, dtype=np.float64).reshape(-1, len(_FIELDS))  # pairs may pass 2**63
        records = table.astype(np.int64)
        growth = np.full((len(records), self.bs + 1), -1, dtype=np.int64)
        if self.growth:
            growth[np.fromiter(self.growth, dtype=np.int64)] = np.array(list(self.growth.values()))
        times = (
            np.concatenate([np.asarray(t, dtype=float) for t in self.times]) if self.times else np.zeros(0)
        )
        R = np.zeros((len(STATE_ROWS), m), dtype=np.int64)
        for i, name in enumerate(STATE_ROWS):
            R[i] = getattr(self, name)
        return records, table[:, 4], growth, times, np.asarray(self.t0, dtype=float), R
