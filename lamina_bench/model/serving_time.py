"""A tabulated copy of `ServingIterationModel`'s iteration time, for replays that compute times as they go.

A replay that follows arrivals (trace, Poisson, a prefill pool) asks for the time of one iteration, or of
one run of decode iterations, tens of thousands of times; the operator composition costs 0.3-4 ms per
call whatever the size of its arrays. This table answers from plain arrays (also from compiled code,
model/paged_kernel.py):

  decode part (B decodes reading S keys, S an integer): for every B up to the batch cap, the exact time at
      knots S_0 < S_1 < ... between B and B x the longest context, linear in between. For a given B the
      time is convex in S between the steps the model declares (`IterationModel.decode_breaks`: the
      calibrated attention launch changes with the KV block count; the roofline and profiles have none),
      so on an interval of knots within one convex piece the interpolation error is largest inside and at
      most 3 times its value at the interval's integer midpoint (the chord minus a convex function is
      concave and 0 at both ends; the integer midpoint is at least a third of the way from either end).
      Knots: a geometric grid, the declared steps (S - 1, S, S + 1 each), then rounds of bisection: an
      interval whose midpoint is off the chord by more than `TABLE_RTOL` of the time is split there, until
      every interval passes or holds no integer inside. The time of every decode iteration is therefore
      within 3 x `TABLE_RTOL` of the exact model's (relative). Where the model is piecewise linear (the
      roofline, profiles) bisection closes in on each kink that moves a midpoint by more than that, and
      the table is exact on the linear pieces (the tests find it equal to rounding on random points).
  prefill part (T prompt tokens, `pairs` attention pairs, n first tokens, q requests with a chunk): exact,
      from tables over integer rows of one layer's dense part with its all-reduces and of the head, and the
      prefill attention's closed form (model/prefill.py, `prefill_attention_line`), composed as
      model/prefill.py does (homogeneous: the rows join the decode GEMMs; Lamina: one compute replica, its
      KV streamed to the attention pool layer by layer).

The replay's per-iteration breakdown is still recomputed from the exact model once, at the end.
"""

from __future__ import annotations

import bisect

import numpy as np

from lamina_bench.catalog.models import kv_bytes_per_token
from lamina_bench.model.iteration import IterationModel
from lamina_bench.model.prefill import (
    ServingIterationModel,
    prefill_attention_layer_s,
    prefill_attention_line,
)
from lamina_bench.model.scheduler import Scheduler

TABLE_RTOL = 1e-6  # bisect an interval whose midpoint is off the chord by more than this share of the time
GRID_POINTS = 48  # first knots per batch size: geometric in S from B to B x the longest context


def decode_knots(serving: ServingIterationModel, max_batch: int, max_context: int, rtol: float = TABLE_RTOL):
    """(offsets, S, time): the knots of batch B are S[offsets[B]:offsets[B + 1]] (module doc)."""
    base, hi = serving.base, max(2, int(max_context))
    rows, knots = [], []
    for b in range(max_batch + 1):
        lo_s, hi_s = (0, 0) if b == 0 else (b, b * hi)
        grid = np.round(np.geomspace(max(lo_s, 1), max(hi_s, 1), GRID_POINTS)) if b else np.zeros(1)
        steps = base.decode_breaks(b, hi) if b else np.zeros(0, dtype=np.int64)
        s = np.concatenate([grid, steps - 1, steps, steps + 1, [lo_s, hi_s]]).astype(np.int64)
        s = np.unique(s[(s >= lo_s) & (s <= hi_s)])
        rows.append(np.full(len(s), b, dtype=np.int64))
        knots.append(s)
    batch, s = np.concatenate(rows), np.concatenate(knots)
    t = serving.time_s(batch, s, 0, 0.0, 0, 0)
    nb, ns, nt = [batch], [s], [t]
    # bisection rounds over the intervals still open (consecutive knots of one batch size, >= 2 apart)
    same = (batch[1:] == batch[:-1]) & (s[1:] - s[:-1] >= 2)
    ib, lo, hi_, t_lo, t_hi = batch[:-1][same], s[:-1][same], s[1:][same], t[:-1][same], t[1:][same]
    while len(lo):
        mid = (lo + hi_) // 2
        t_mid = serving.time_s(ib, mid, 0, 0.0, 0, 0)
        nb.append(ib), ns.append(mid), nt.append(t_mid)
        chord = t_lo + (t_hi - t_lo) * (mid - lo) / (hi_ - lo)
        off = np.abs(t_mid - chord) > rtol * np.abs(t_mid)
        left, right = off & (mid - lo >= 2), off & (hi_ - mid >= 2)
        ib, lo, hi_, t_lo, t_hi = (
            np.concatenate([ib[left], ib[right]]),
            np.concatenate([lo[left], mid[right]]),
            np.concatenate([mid[left], hi_[right]]),
            np.concatenate([t_lo[left], t_mid[right]]),
            np.concatenate([t_mid[left], t_hi[right]]),
        )
    batch, s, t = np.concatenate(nb), np.concatenate(ns), np.concatenate(nt)
    order = np.lexsort((s, batch))
    batch, s, t = batch[order], s[order], t[order]
    offsets = np.searchsorted(batch, np.arange(max_batch + 2)).astype(np.int64)
    return offsets, s, np.asarray(t, dtype=np.float64)


class ServingTimeTable:
    """`__call__` has `ServingIterationModel.time_s`'s signature for one iteration (module doc); decodes
    of at most `max_batch` requests whose contexts are at most `max_context` tokens, prefill rows up to
    `max_rows`."""

    def __init__(
        self, serving: ServingIterationModel, max_rows: int, max_batch: int, max_context: int
    ) -> None:
        self.serving = serving
        b = serving.base
        self.lamina = b.system == "lamina"
        self.L = b.model.num_layers
        self.max_batch, self.max_context = int(max_batch), int(max_context)
        rows = np.arange(max_rows + 1, dtype=float)
        self.layer = np.asarray(serving._layer(rows), dtype=np.float64)
        self.head = np.asarray(serving._head(rows), dtype=np.float64)
        self.layer_list, self.head_list = self.layer.tolist(), self.head.tolist()
        self.offsets, self.knot_s, self.knot_t = decode_knots(serving, self.max_batch, self.max_context)
        self.rows_s = [
            self.knot_s[i:j].tolist() for i, j in zip(self.offsets[:-1], self.offsets[1:], strict=True)
        ]
        self.rows_t = [
            self.knot_t[i:j].tolist() for i, j in zip(self.offsets[:-1], self.offsets[1:], strict=True)
        ]
        line = prefill_attention_line(b.compute, b.model, b.dtype, b.tp)
        if line is None:  # the exact model's error (a device without the specs prefill attention needs)
            prefill_attention_layer_s(b.compute, b.model, b.dtype, 1, 1.0, b.tp)
            raise AssertionError("prefill_attention_line and prefill_attention_layer_s disagree")
        self.prefill_line = line
        self.cpu_per_request_s = float(serving.policy.cpu_overhead_per_request_s)  # the fixed part is in rows
        self.kv_s_per_token = self.latency_s = 0.0
        if self.lamina:
            lat_c, bw_c, _ = b.compute.nic()
            lat_a, bw_a, _ = b.attention.nic()
            bandwidth = min(b.tp * bw_c, b.attention_count * bw_a)
            self.kv_s_per_token = float(kv_bytes_per_token(b.model, b.dtype) / bandwidth)
            self.latency_s = float(max(lat_c, lat_a))

    def decode_s(self, batch: int, sum_context: int) -> float:
        """Time of one decode iteration (no prefill): linear between the knots of `batch`."""
        s, t = self.rows_s[batch], self.rows_t[batch]
        j = bisect.bisect_right(s, sum_context)
        if j == len(s) and sum_context == s[-1]:
            return t[-1]
        if j == 0 or j == len(s):
            raise ValueError(f"{sum_context} keys for {batch} decodes is outside the table [{s[0]}, {s[-1]}]")
        s0 = s[j - 1]
        return t[j - 1] + (t[j] - t[j - 1]) * (sum_context - s0) / (s[j] - s0)

    def decode_run(
        self, batch: int, sum_context: int, steps: int, t: float, stop: float | None
    ) -> list[float]:
        """Times of up to `steps` decode iterations of `batch` decodes, the first reading `sum_context` keys
        and each the next `batch` more, ending with the first that ends at or after `stop` (clock `t` at the
        start; None: no stop)."""
        out = []
        for i in range(steps):
            x = self.decode_s(batch, sum_context + batch * i)
            out.append(x)
            t += x
            if stop is not None and t >= stop:
                break
        return out

    def prefill_attention_s(self, tokens: int, pairs: float) -> float:
        """One layer's prefill attention (prefill.prefill_attention_line)."""
        fixed, per_token, per_pair, flops_per_pair, floor = self.prefill_line
        return max(fixed + max(per_token * tokens + per_pair * pairs, flops_per_pair * pairs), floor)

    def _prefill_extra_s(self, batch: int, tokens: int, pairs: float, first: int) -> float:
        L, layer, head = self.L, self.layer_list, self.head_list
        attn = L * self.prefill_attention_s(tokens, pairs)
        if not self.lamina:
            return L * (layer[batch + tokens] - layer[batch]) + head[batch + first] - head[batch] + attn
        compute = L * layer[tokens] + head[first] + attn
        transfer = tokens * self.kv_s_per_token
        return max(compute, transfer) + transfer / L + self.latency_s

    def __call__(
        self, batch, sum_context, prefill_tokens, prefill_pairs, prefill_seqs, first_tokens
    ) -> float:
        batch, tokens = int(batch), int(prefill_tokens)
        t = self.decode_s(batch, int(sum_context))
        if tokens:
            t += self._prefill_extra_s(batch, tokens, float(prefill_pairs), int(first_tokens))
        return t + self.cpu_per_request_s * int(prefill_seqs)


def time_table(base: IterationModel, policy: Scheduler, max_seqs: int, max_context: int) -> ServingTimeTable:
    """The table for replays of `base` under `policy` with at most `max_seqs` running requests whose
    contexts stay within `max_context` tokens, kept on `base` for the next replay of the same configuration
    (a capacity search replays one configuration at many rates)."""
    rows = max_seqs + policy.max_num_batched_tokens
    key = (policy, rows, max_seqs, max_context)
    tables = getattr(base, "tables", {})
    if key not in tables:
        tables[key] = ServingTimeTable(ServingIterationModel(base, policy), rows, max_seqs, max_context)
    return tables[key]
