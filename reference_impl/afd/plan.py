"""The step plan: rank 0's control message ("ctrl") to every other rank, one per engine step.

An attention worker's plan names the sequences it serves in this step (their new tokens), the KV
reservations and frees made for it since its last plan, and the number of micro-batches. An expert
worker's plan carries only the step, its phase and the number of micro-batches: that fixes how many
dispatch messages it takes from each attention worker (one per MoE layer and micro-batch). A plan
travels as one int64 tensor (`encode` / `decode`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import torch


class Op(IntEnum):
    STEP = 1  # one forward pass: a prefill or a decode step
    STOP = 2  # the run is over: hand back your figures and exit


class Phase(IntEnum):
    PREFILL = 1
    DECODE = 2


_HEAD_LEN = 8  # op, step_id, phase, micro_batches and four section lengths


@dataclass(frozen=True)
class StepPlan:
    op: Op
    step_id: int = 0
    phase: Phase = Phase.PREFILL
    micro_batches: int = 1  # contiguous groups of this worker's sequences, run ping-pong when 2
    seq_ids: tuple[int, ...] = ()  # attention worker: the sequences it runs in this step
    query_lens: tuple[int, ...] = ()  # new tokens per sequence
    tokens: tuple[int, ...] = ()  # the new token ids, sequences concatenated
    reserves: tuple[tuple[int, int], ...] = ()  # (seq_id, tokens) placed on this worker since its last plan
    frees: tuple[int, ...] = ()  # sequences of this worker freed since its last plan (applied first)

    def __post_init__(self) -> None:
        if len(self.query_lens) != len(self.seq_ids) or len(self.tokens) != sum(self.query_lens):
            raise ValueError(
                f"plan of {len(self.seq_ids)} sequences has {len(self.query_lens)} query lengths and "
                f"{len(self.tokens)} tokens for {sum(self.query_lens)}"
            )
        if self.micro_batches < 1:
            raise ValueError(f"micro_batches must be >= 1, got {self.micro_batches}")

    def micro_batch_bounds(self) -> list[tuple[int, int]]:
        """[start, stop) of each micro-batch within seq_ids (sizes differ by at most 1; some may be empty)."""
        base, extra = divmod(len(self.seq_ids), self.micro_batches)
        bounds, start = [], 0
        for j in range(self.micro_batches):
            stop = start + base + (j < extra)
            bounds.append((start, stop))
            start = stop
        return bounds

    def encode(self) -> torch.Tensor:
        head = [int(self.op), self.step_id, int(self.phase), self.micro_batches]
        head += [len(self.seq_ids), len(self.tokens), len(self.reserves), len(self.frees)]
        body = [*self.seq_ids, *self.query_lens, *self.tokens, *(v for pair in self.reserves for v in pair)]
        return torch.tensor(head + body + list(self.frees), dtype=torch.int64)

    @classmethod
    def decode(cls, tensor: torch.Tensor) -> StepPlan:
        values = tensor.tolist()
        op, step_id, phase, micro, n_seq, n_tok, n_res, n_free = values[:_HEAD_LEN]
        lengths = (n_seq, n_seq, n_tok, 2 * n_res, n_free)
        if len(values) != _HEAD_LEN + sum(lengths):
            raise ValueError(f"plan of {len(values)} values does not match its head {values[:_HEAD_LEN]}")
        parts, pos = [], _HEAD_LEN
        for n in lengths:
            parts.append(tuple(values[pos : pos + n]))
            pos += n
        seq_ids, query_lens, tokens, reserves, frees = parts
        return cls(
            op=Op(op),
            step_id=step_id,
            phase=Phase(phase),
            micro_batches=micro,
            seq_ids=seq_ids,
            query_lens=query_lens,
            tokens=tokens,
            reserves=tuple(zip(reserves[0::2], reserves[1::2], strict=True)),
            frees=frees,
        )
