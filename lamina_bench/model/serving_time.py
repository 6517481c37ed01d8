"""A tabulated copy of `ServingIterationModel`'s iteration time, for replays that compute times as they go.

A replay that follows arrivals (trace, Poisson, a prefill pool) asks for the time of one iteration, or of
one run of decode iterations, tens of thousands of times; the operator composition costs about a
millisecond per call whatever the size of its arrays. This table answers in microseconds:

  decode part (B decodes reading S keys): for each B met, the exact time at S = B x c over a geometric grid
      of mean contexts c from 1 to the KV capacity (`GRID_POINTS` points), linear in c between them. The
      time is piecewise linear in S for a given B on the roofline and on profile fits (attention bytes and
      flops are linear in S; the Lamina cycle is a max of such terms), so the only error is at a kink
      between two grid points; tests/lamina_bench/test_serving_time.py bounds it against the exact model.
  prefill part (T prompt tokens, `pairs` attention pairs, n first tokens, q requests with a chunk): exact,
      from tables over integer rows of one layer's dense part with its all-reduces and of the head, and one
      prefill-attention call, composed as model/prefill.py does (homogeneous: the rows join the decode
      GEMMs; Lamina: one compute replica, its KV streamed to the attention pool layer by layer).

The exact model stays the reference: the replay's per-iteration breakdown is recomputed from it.
"""

from __future__ import annotations

import bisect
from functools import lru_cache

import numpy as np

from lamina_bench.catalog.models import kv_bytes_per_token
from lamina_bench.model.iteration import IterationModel
from lamina_bench.model.prefill import ServingIterationModel, prefill_attention_layer_s
from lamina_bench.model.scheduler import Scheduler

GRID_POINTS = 2048  # mean-context points per batch size (geometric from 1 to the KV capacity)


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
        self.cpu_s, self.cpu_per_request_s = (
            serving.policy.cpu_overhead_s,
            serving.policy.cpu_overhead_per_request_s,
        )
        if self.lamina:
            lat_c, bw_c, _ = b.compute.nic()
            lat_a, bw_a, _ = b.attention.nic()
            self.kv_s_per_token = kv_bytes_per_token(b.model, b.dtype) / min(
                b.tp * bw_c, b.attention_count * bw_a
            )
            self.latency_s = max(lat_c, lat_a)

    def _row(self, batch: int) -> np.ndarray:
        """Exact decode-iteration times (CPU overhead of `batch` requests included) at S = batch x grid."""
        row = self.rows.get(batch)
        if row is None:
            s = self.serving
            ctx = self.grid * max(batch, 1) if batch else np.zeros(1)
            row = s.time_s(batch, ctx, 0, 0.0, 0, 0)
            self.rows[batch], self.rows_list[batch] = row, row.tolist()
        return row

    def decode_s(self, batch: int, sum_context: float) -> float:
        """Time of one decode iteration (no prefill), from the table."""
        if not batch:
            return self._row(0)[0]
        self._row(batch)
        row, grid = self.rows_list[batch], self.grid_list
        c = sum_context / batch
        j = bisect.bisect_right(grid, c)
        if j <= 0:
            return row[0]
        if j >= len(grid):
            return row[-1] + (row[-1] - row[-2]) / (grid[-1] - grid[-2]) * (c - grid[-1])
        g0, g1 = grid[j - 1], grid[j]
        return row[j - 1] + (row[j] - row[j - 1]) * (c - g0) / (g1 - g0)

    def decode_run_s(self, batch: int, sum_context: np.ndarray) -> np.ndarray:
        """Times of decode iterations of `batch` decodes reading `sum_context` keys each (vector)."""
        if not batch:
            return np.full(len(sum_context), self._row(0)[0])
        row = self._row(batch)
        c = np.asarray(sum_context, dtype=float) / batch
        return np.interp(c, self.grid, row)

    def _prefill_extra_s(self, batch: int, tokens: int, pairs: float, first: int) -> float:
        b, L = self.serving.base, self.L
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
        if np.ndim(sum_context):  # a run of decode iterations (the replay gives no prefill with one)
            return self.decode_run_s(int(batch), sum_context)
        batch, tokens = int(batch), int(prefill_tokens)
        t = self.decode_s(batch, float(sum_context))
        if tokens:
            t += self._prefill_extra_s(batch, tokens, float(prefill_pairs), int(first_tokens))
        return t + self.cpu_per_request_s * int(prefill_seqs)


@lru_cache(maxsize=8)
def serving_time_table(
    base: IterationModel, policy: Scheduler, max_rows: int, max_context: int
) -> ServingTimeTable:
    """The table of `base` under `policy`, kept for the next replay of the same configuration (a capacity
    search replays one configuration at many rates)."""
    return ServingTimeTable(ServingIterationModel(base, policy), max_rows, max_context)
