"""The step plan: rank 0's control message that tells every other rank what to do next.

Compute rank 0 runs the scheduler and sends every other rank one `StepPlan` per step (message kind
"ctrl"), so all ranks execute the same plan: a forward (prefill or decode step), a rebuild of replaced
attention workers' KV, a regroup into a new process group, or the stop. With prefill workers, a prefill
job goes to one prefill worker and every attention worker only (Op.PREFILL); step_id numbers it too. A plan travels as one int64
tensor (`encode` / `decode`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum

import torch


class Op(IntEnum):
    STEP = 1  # one forward: a prefill or a decode step
    REBUILD = 2  # refill replaced attention workers' KV (reservations + a prefill of the histories)
    REGROUP = 3  # a new epoch: join a fresh process group that includes the replacements
    STOP = 4  # send your statistics to rank 0 and exit
    # a prefill job: the prefill worker targets[0] runs the prompts (tokens), ships each layer's KV to
    # the attention workers and its logits to rank 0; the attention workers accept that KV as it comes
    PREFILL = 5


class Phase(IntEnum):
    PREFILL = 1
    DECODE = 2


_HEAD_LEN = 11  # op, step_id, phase, redo, epoch and six section lengths


@dataclass(frozen=True)
class StepPlan:
    """What every worker does next; rank 0 sends one to every other rank (kind "ctrl")."""

    op: Op
    step_id: int = 0
    phase: Phase = Phase.PREFILL
    redo: bool = False  # a repeat of step_id after a recovery: reservations and frees are applied already
    epoch: int = 0  # REGROUP: the epoch to join
    seq_ids: tuple[int, ...] = ()
    query_lens: tuple[int, ...] = ()  # new tokens per sequence
    positions: tuple[int, ...] = ()  # position of each sequence's first new token (tokens already cached)
    micro_batches: tuple[int, ...] = ()  # DECODE: sizes of the contiguous micro-batches (sum = len(seq_ids))
    reserves: tuple[tuple[int, int], ...] = ()  # (seq_id, tokens) made since the previous step
    frees: tuple[int, ...] = ()  # sequences freed since the previous step (applied before reserves)
    targets: tuple[int, ...] = ()  # REBUILD: attention workers to refill; REGROUP: ranks replaced;
    # PREFILL: the prefill worker's rank
    tokens: tuple[int, ...] = ()  # input ids, sequences concatenated; only compute workers get them

    def __post_init__(self) -> None:
        n = len(self.seq_ids)
        if len(self.query_lens) != n or len(self.positions) != n:
            raise ValueError(f"plan needs one query_len and position per sequence, got {n} sequences")
        if self.micro_batches and sum(self.micro_batches) != n:
            raise ValueError(f"micro-batch sizes {self.micro_batches} do not add up to {n} sequences")
        if self.tokens and len(self.tokens) != sum(self.query_lens):
            raise ValueError(f"plan carries {len(self.tokens)} tokens for {sum(self.query_lens)} new tokens")

    @property
    def num_tokens(self) -> int:
        return sum(self.query_lens)

    def micro_batch_bounds(self) -> list[tuple[int, int]]:
        """[start, stop) of each micro-batch within the step's sequences."""
        bounds, start = [], 0
        for size in self.micro_batches:
            bounds.append((start, start + size))
            start += size
        return bounds

    def for_attention(self) -> StepPlan:
        """The plan an attention worker gets: without the token ids it does not need."""
        return replace(self, tokens=())

    def encode(self) -> torch.Tensor:
        """One int64 tensor: a head of _HEAD_LEN values, then the sections in field order."""
        sections = [
            self.seq_ids,
            self.query_lens,
            self.positions,
            self.micro_batches,
            [v for pair in self.reserves for v in pair],
            self.frees,
            self.targets,
            self.tokens,
        ]
        head = [int(self.op), self.step_id, int(self.phase), int(self.redo), self.epoch]
        head += [len(self.seq_ids), len(self.micro_batches), len(self.reserves), len(self.frees)]
        head += [len(self.targets), len(self.tokens)]
        return torch.tensor(head + [v for s in sections for v in s], dtype=torch.int64)

    @classmethod
    def decode(cls, tensor: torch.Tensor) -> StepPlan:
        values = tensor.tolist()
        op, step_id, phase, redo, epoch, n_seq, n_micro, n_res, n_free, n_targets, n_tok = values[:_HEAD_LEN]
        lengths = [n_seq, n_seq, n_seq, n_micro, 2 * n_res, n_free, n_targets, n_tok]
        if len(values) != _HEAD_LEN + sum(lengths):
            raise ValueError(f"plan of {len(values)} values does not match its head {values[:_HEAD_LEN]}")
        parts, pos = [], _HEAD_LEN
        for n in lengths:
            parts.append(tuple(values[pos : pos + n]))
            pos += n
        seq_ids, query_lens, positions, micro, reserves, frees, targets, tokens = parts
        return cls(
            op=Op(op),
            step_id=step_id,
            phase=Phase(phase),
            redo=bool(redo),
            epoch=epoch,
            seq_ids=seq_ids,
            query_lens=query_lens,
            positions=positions,
            micro_batches=micro,
            reserves=tuple(zip(reserves[0::2], reserves[1::2], strict=True)),
            frees=frees,
            targets=targets,
            tokens=tokens,
        )
