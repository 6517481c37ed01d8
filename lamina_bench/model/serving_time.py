"""A tabulated copy of `ServingIterationModel`'s iteration time, for replays that compute times as they go.

A replay that follows arrivals (trace, Poisson, a prefill pool) asks for the time of one iteration, or of
one run of decode iterations, tens of thousands of times; the operator composition costs 0.3-4 ms per
call whatever the size of its arrays. This table answers in microseconds, equal to the exact model up to
float rounding:

  decode part (B decodes reading S keys): for each B met, the exact time at S = B x c over a geometric grid
      of mean contexts c from 1 to the KV capacity (`GRID_POINTS` points) and at the middle of every grid
      interval. On the roofline and on profile fits the time is convex and piecewise linear in S for a
      given B (attention bytes and flops are linear in S; every composition is a sum or a max of such
      terms), and a convex function that meets its chord at the middle of an interval is linear on it:
      there the table interpolates (exact); in an interval whose middle is off the chord (by more than
      `LINEAR_RTOL`: a kink inside) the exact model is called. The calibrated operator model (steps in
      the context, L2 residency) is not piecewise linear: with it every call goes to the exact model.
  prefill part (T prompt tokens, `pairs` attention pairs, n first tokens, q requests with a chunk): exact,
      from tables over integer rows of one layer's dense part with its all-reduces and of the head, and one
      prefill-attention call, composed as model/prefill.py does (homogeneous: the rows join the decode
      GEMMs; Lamina: one compute replica, its KV streamed to the attention pool layer by layer).

The replay's per-iteration breakdown is still recomputed from the exact model once, at the end.
"""

from __future__ import annotations

import bisect
from functools import lru_cache

import numpy as np

from lamina_bench.catalog.models import kv_bytes_per_token
from lamina_bench.model.iteration import IterationModel
from lamina_bench.model.prefill import (
    ServingIterationModel,
    prefill_attention_layer_s,
    prefill_attention_scalar,
)
from lamina_bench.model.scheduler import Scheduler

GRID_POINTS = 1024  # mean-context points per batch size (geometric from 1 to the KV capacity)
RUN_VECTOR_STEPS = 48  # decode runs longer than this are timed with numpy, shorter ones in Python
LINEAR_RTOL = 1e-12  # a grid interval is linear when its middle is this close to the chord (float noise)


class ServingTimeTable:
    """`__call__` has `ServingIterationModel.time_s`'s signature (module doc)."""

    def __init__(self, serving: ServingIterationModel, max_rows: int, max_context: int) -> None:
        self.serving = serving
        b = serving.base
        self.lamina = b.system == "lamina"
        self.L = b.model.num_layers
        rows = np.arange(max_rows + 1, dtype=float)
        self.layer = serving._layer(rows).tolist()
        self.head = serving._head(rows).tolist()
        self.grid = np.geomspace(1.0, max(2.0, float(max_context)), GRID_POINTS)
        self.grid_list = self.grid.tolist()
        self.rows: dict[int, np.ndarray] = {}
        self.rows_list: dict[int, list[float]] = {}
        self.kinked: dict[int, np.ndarray] = {}
        self.kinked_list: dict[int, list[bool]] = {}
        self.prefill_attention = prefill_attention_scalar(b.compute, b.model, b.dtype, b.tp)
        self.exact_only = any(dm.ops is not None and dm.profile is None for dm in (b.compute, b.attention))
        self.cpu_per_request_s = serving.policy.cpu_overhead_per_request_s  # the fixed part is in the rows
        if self.lamina:
            lat_c, bw_c, _ = b.compute.nic()
            lat_a, bw_a, _ = b.attention.nic()
            self.kv_s_per_token = kv_bytes_per_token(b.model, b.dtype) / min(
                b.tp * bw_c, b.attention_count * bw_a
            )
            self.latency_s = max(lat_c, lat_a)

    def _row(self, batch: int) -> list[float]:
        """Exact decode-iteration times (CPU overhead of `batch` requests included) at S = batch x grid; the
        intervals whose middle is off the chord are recorded in `self.kinked[batch]`."""
        row = self.rows.get(batch)
        if row is None:
            s, grid = self.serving, self.grid
            if batch == 0:
                row = s.time_s(0, np.zeros(len(grid)), 0, 0.0, 0, 0)
                kinked = np.zeros(len(grid) - 1, dtype=bool)
            else:
                mid = 0.5 * (grid[:-1] + grid[1:])
                both = s.time_s(batch, batch * np.concatenate([grid, mid]), 0, 0.0, 0, 0)
                row, at_mid = both[: len(grid)], both[len(grid) :]
                chord = 0.5 * (row[:-1] + row[1:])
                kinked = np.abs(at_mid - chord) > LINEAR_RTOL * np.abs(at_mid)
            self.rows[batch], self.rows_list[batch], self.kinked[batch] = row, row.tolist(), kinked
            self.kinked_list[batch] = kinked.tolist()
        return self.rows_list[batch]

    def _exact_decode(self, batch, sum_context):
        return self.serving.time_s(batch, sum_context, 0, 0.0, 0, 0)

    def decode_s(self, batch: int, sum_context: float) -> float:
        """Time of one decode iteration (no prefill)."""
        if self.exact_only:
            return float(self._exact_decode(batch, sum_context))
        row, grid = self._row(batch), self.grid_list
        if not batch:
            return row[0]
        c = sum_context / batch
        j = bisect.bisect_right(grid, c)
        if j <= 0 or j >= len(grid) or self.kinked_list[batch][j - 1]:
            return float(self._exact_decode(batch, sum_context))
        g0 = grid[j - 1]
        return row[j - 1] + (row[j] - row[j - 1]) * (c - g0) / (grid[j] - g0)

    def decode_run_s(self, batch: int, sum_context: np.ndarray) -> np.ndarray:
        """Times of decode iterations of `batch` decodes reading `sum_context` keys each (vector)."""
        sum_context = np.asarray(sum_context, dtype=float)
        if self.exact_only or not batch:
            return np.broadcast_to(self._exact_decode(batch, sum_context), sum_context.shape).astype(float)
        self._row(batch)
        c = sum_context / batch
        out = np.interp(c, self.grid, self.rows[batch])
        j = np.searchsorted(self.grid, c, side="right")
        off = (j <= 0) | (j >= len(self.grid))
        off |= self.kinked[batch][np.clip(j - 1, 0, len(self.grid) - 2)]
        if off.any():
            out[off] = self._exact_decode(batch, sum_context[off])
        return out

    def decode_run(self, batch: int, sum_context: float, steps: int, t: float, stop: float | None):
        """Times (a list) of up to `steps` decode iterations of `batch` decodes, the first reading
        `sum_context` keys and each the next `batch` more, ending with the first that ends at or after
        `stop` (clock `t` at the start; None: no stop). Short runs in Python, long ones vectorised."""
        if steps > RUN_VECTOR_STEPS or self.exact_only or not batch:
            times = self.decode_run_s(batch, sum_context + batch * np.arange(steps))
            if stop is not None:
                times = times[: int(np.searchsorted(t + np.cumsum(times), stop, side="left")) + 1]
            return times.tolist()
        row, grid, kinked = self._row(batch), self.grid_list, self.kinked_list[batch]
        n, out = len(grid), []
        j = bisect.bisect_right(grid, sum_context / batch)
        for i in range(steps):
            s = sum_context + batch * i
            c = s / batch
            while j < n and grid[j] <= c:
                j += 1
            if 0 < j < n and not kinked[j - 1]:
                g0 = grid[j - 1]
                x = row[j - 1] + (row[j] - row[j - 1]) * (c - g0) / (grid[j] - g0)
            else:
                x = float(self._exact_decode(batch, s))
            out.append(x)
            t += x
            if stop is not None and t >= stop:
                break
        return out

    def _prefill_extra_s(self, batch: int, tokens: int, pairs: float, first: int) -> float:
        b, L = self.serving.base, self.L
        if self.prefill_attention is not None:
            attn = L * self.prefill_attention(float(tokens), pairs)
        else:
            attn = L * float(prefill_attention_layer_s(b.compute, b.model, b.dtype, tokens, pairs, b.tp))
        if not self.lamina:
            dense = (
                L * (self.layer[batch + tokens] - self.layer[batch])
                + self.head[batch + first]
                - self.head[batch]
            )
            return dense + attn
        compute = L * self.layer[tokens] + self.head[first] + attn
        transfer = tokens * self.kv_s_per_token
        return max(compute, transfer) + transfer / L + self.latency_s

    def __call__(self, batch, sum_context, prefill_tokens, prefill_pairs, prefill_seqs, first_tokens):
        if self.exact_only:
            return self.serving.time_s(
                batch, sum_context, prefill_tokens, prefill_pairs, prefill_seqs, first_tokens
            )
        if np.ndarray in (type(batch), type(sum_context), type(prefill_tokens)):
            if np.ndim(batch) or np.any(prefill_tokens):  # arrays with prefill: the exact model
                return self.serving.time_s(
                    batch, sum_context, prefill_tokens, prefill_pairs, prefill_seqs, first_tokens
                )
            return self.decode_run_s(int(batch), sum_context) + self.cpu_per_request_s * np.asarray(
                prefill_seqs
            )
        batch, tokens = int(batch), int(prefill_tokens)
        t = self.decode_s(batch, float(sum_context))
        if tokens:
            t += self._prefill_extra_s(batch, tokens, float(prefill_pairs), int(first_tokens))
        return t + self.cpu_per_request_s * int(prefill_seqs)


@lru_cache(maxsize=4)
def serving_time_table(
    base: IterationModel, policy: Scheduler, max_rows: int, max_context: int
) -> ServingTimeTable:
    """The table of `base` under `policy`, kept for the next replay of the same configuration (a capacity
    search replays one configuration at many rates)."""
    return ServingTimeTable(ServingIterationModel(base, policy), max_rows, max_context)


def time_table(
    base: IterationModel, policy: Scheduler, max_seqs: int, capacity_tokens: int
) -> ServingTimeTable:
    """The table for replays of `base` under `policy` with at most `max_seqs` running requests and
    `capacity_tokens` of KV, shared between replays of the same configuration when `base` hashes."""
    rows = max_seqs + policy.max_num_batched_tokens
    try:
        return serving_time_table(base, policy, rows, capacity_tokens)
    except TypeError:  # a model holding unhashable parts: a table for this replay only
        return ServingTimeTable(ServingIterationModel(base, policy), rows, capacity_tokens)
