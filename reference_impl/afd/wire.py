"""What crosses between the pools per MoE layer and micro-batch: dispatch (M2N) and combine (N2M).

Every attention worker sends every expert worker w, per MoE layer and micro-batch, two messages (even
when they carry no rows, so each side knows how many to expect):

    "dispatch"  [rows (n_w, d)]: the hidden states of the tokens with at least one chosen expert on w, in
                token order; one copy per token and expert worker, however many of its experts w holds
    "routing"   [counts (E_w,) int32, index (m_w,) int32]: for each of w's experts in order, how many
                (token, expert) pairs it gets, then their rows in `rows` (ascending within an expert)

and w answers with

    "combine"   [outputs (m_w, d)]: each pair's expert output, unweighted, in the order of `index`.

The routing weights never leave the attention worker: it weights and sums the outputs itself, in
expert order, exactly as MoEBlock does (moe.weighted_sum). Bytes per token per MoE layer: dispatch
d·e times the number of expert workers holding its experts (k·d·e when every expert has its own
worker), routing 4 bytes per pair plus 4 per expert per message, combine k·d·e.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

KINDS = ("dispatch", "routing", "combine")


@dataclass(frozen=True)
class Dispatch:
    """One expert worker's share of a micro-batch's tokens at one MoE layer."""

    rows: torch.Tensor  # (n, d) hidden states, one per token with an expert on this worker
    counts: torch.Tensor  # (E_w,) int32 pairs per expert of this worker
    index: torch.Tensor  # (m,) int32 the row of each pair, expert by expert

    def to_message(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The tensors of the "dispatch" and the "routing" message."""
        return [self.rows], [self.counts, self.index]

    @classmethod
    def from_message(cls, dispatch: Sequence[torch.Tensor], routing: Sequence[torch.Tensor]) -> Dispatch:
        return cls(dispatch[0], routing[0], routing[1])


def split_for_workers(
    x: torch.Tensor, experts: torch.Tensor, ranges: Sequence[tuple[int, int]]
) -> list[Dispatch]:
    """x (T, d) and the chosen experts (T, k) -> one Dispatch per expert worker holding experts [lo, hi)."""
    num_tokens = x.shape[0]
    out = []
    for lo, hi in ranges:
        tokens = ((experts >= lo) & (experts < hi)).any(dim=1).nonzero().flatten()  # (n,) ascending
        row_of = torch.full((num_tokens,), -1, dtype=torch.long, device=x.device)
        row_of[tokens] = torch.arange(tokens.numel(), device=x.device)
        per_expert = [torch.where(experts == e)[0] for e in range(lo, hi)]  # tokens routed to e, ascending
        counts = torch.tensor([t.numel() for t in per_expert], dtype=torch.int32)
        index = row_of[torch.cat(per_expert)].to(torch.int32)  # (m,)
        out.append(Dispatch(x[tokens], counts, index))
    return out


def expert_inputs(dispatch: Dispatch) -> list[torch.Tensor]:
    """The rows each of the worker's experts gets, in expert order: [(n_e, d), ...]."""
    return list(dispatch.rows[dispatch.index.long()].split(dispatch.counts.tolist()))


def run_experts(experts: Sequence[torch.nn.Module], dispatches: Sequence[Dispatch]) -> list[torch.Tensor]:
    """The expert side of one MoE layer and micro-batch: each expert runs once on the rows every attention
    worker routed to it (concatenated in worker order); returns per attention worker its outputs (m, d) in
    the order of its index."""
    inputs = [expert_inputs(d) for d in dispatches]  # [worker][expert] -> (n, d)
    outputs: list[list[torch.Tensor]] = [[] for _ in dispatches]
    for i, expert in enumerate(experts):
        parts = [rows[i] for rows in inputs]
        y = expert(torch.cat(parts))  # (sum n, d)
        for out, part in zip(outputs, y.split([p.shape[0] for p in parts]), strict=True):
            out.append(part)
    return [torch.cat(out) for out in outputs]


def outputs_by_expert(combined: torch.Tensor, dispatch: Dispatch, lo: int) -> dict[int, torch.Tensor]:
    """A "combine" message's outputs (m, d) -> expert id -> (n_e, d), for the experts lo.. of its worker."""
    parts = combined.split(dispatch.counts.tolist())
    return {lo + i: part for i, part in enumerate(parts)}
