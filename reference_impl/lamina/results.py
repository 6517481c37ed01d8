"""What a Lamina run reports: the engine's run plus each worker's time breakdown, link traffic and recoveries.

Every figure is measured: times by each worker's clock (clock.py), bytes by the transports. Workers
send theirs to rank 0 at the end of the run ("stats" message), as the tensors of `steps_to_tensor`
and `traffic_to_tensor`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from reference_impl.dtypes import DTYPES
from reference_impl.engine import EngineRun, run_summary
from reference_impl.lamina.clock import CATEGORIES, STEP_KINDS, StepTimes
from reference_impl.lamina.config import LaminaConfig
from reference_impl.lamina.links import DECODE_LINK_KINDS, KINDS
from reference_impl.model import ModelConfig


@dataclass(frozen=True)
class WorkerTimes:
    """Where one worker's time went (measured), per step and in total; see clock.StepTimes."""

    rank: int
    role: str  # "compute" | "attention"
    steps: tuple[StepTimes, ...]

    def total(self, category: str) -> float:
        return sum(getattr(s, f"{category}_s") for s in self.steps)

    @property
    def wall_s(self) -> float:
        return sum(s.wall_s for s in self.steps)

    def share(self, category: str, kinds: Sequence[str] = ("prefill", "decode")) -> float | None:
        """Share of `category` in the time of the steps of the given kinds (None if there were none)."""
        steps = [s for s in self.steps if s.kind in kinds]
        wall = sum(s.wall_s for s in steps)
        return sum(getattr(s, f"{category}_s") for s in steps) / wall if wall > 0 else None


@dataclass(frozen=True)
class LinkTraffic:
    """Messages of one kind, summed over every sender (measured: exact bytes from the transports)."""

    kind: str
    messages: int
    payload_bytes: int
    header_bytes: int


@dataclass(frozen=True)
class RecoveryEvent:
    step_id: int
    dead_ranks: tuple[int, ...]
    roles: tuple[str, ...]
    detected_at_s: float  # since the executor started: when the failed attempt ended
    failed_attempt_s: float  # the attempt that failed
    regroup_s: float  # replacements started and the fresh process group formed
    rebuild_s: float  # running requests' KV recomputed and shipped (0 if only compute workers died)
    redo_s: float  # the failed step run again
    rebuilt_tokens: int

    @property
    def recovery_s(self) -> float:
        """From detection to the end of the redone step."""
        return self.regroup_s + self.rebuild_s + self.redo_s


@dataclass(frozen=True)
class ModelShape:
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    elem_bytes: int  # e

    @classmethod
    def of(cls, m: ModelConfig, dtype: str) -> ModelShape:
        """The shape of `m` run in `dtype` (a DTYPES name)."""
        elem_bytes = DTYPES[dtype].itemsize
        return cls(m.num_layers, m.hidden_size, m.num_heads, m.num_kv_heads, m.head_dim, elem_bytes)


@dataclass(frozen=True)
class LaminaRun:
    engine: EngineRun
    config: LaminaConfig
    model: ModelShape
    workers: tuple[WorkerTimes, ...]  # by rank; a worker killed mid-run is missing
    traffic: tuple[LinkTraffic, ...]
    decode_token_layers: int  # sum over decode attempts of (sequences x layers)
    header_bytes_per_message: int
    recoveries: tuple[RecoveryEvent, ...]

    @property
    def completions(self):
        return self.engine.completions

    def kind(self, name: str) -> LinkTraffic:
        return next((t for t in self.traffic if t.kind == name), LinkTraffic(name, 0, 0, 0))

    @property
    def link_payload_bytes_per_token_per_layer(self) -> float | None:
        """Decode traffic between the pools (q, k, v out; attention output back) per token per layer.

        None when nothing was decoded, and after a recovery: a killed worker's sent-byte counts die
        with it while its decode steps stay counted, so the ratio would be inexact.
        """
        if not self.decode_token_layers or self.recoveries:
            return None
        return sum(self.kind(k).payload_bytes for k in DECODE_LINK_KINDS) / self.decode_token_layers

    @property
    def link_header_bytes_per_token_per_layer(self) -> float | None:
        """Header bytes of the same messages per token per layer (None in the same cases)."""
        if not self.decode_token_layers or self.recoveries:
            return None
        return sum(self.kind(k).header_bytes for k in DECODE_LINK_KINDS) / self.decode_token_layers

    @property
    def recovery_s(self) -> float:
        """Seconds spent recovering (sum of RecoveryEvent.recovery_s); part of the engine's step times."""
        return sum(r.recovery_s for r in self.recoveries)

    @property
    def expected_link_bytes_per_token_per_layer(self) -> float:
        """(2 + 2/G) e d (the paper's link formula) with d = num_heads x head_dim, the width of q."""
        m = self.model
        return (2 + 2 * m.num_kv_heads / m.num_heads) * m.elem_bytes * m.num_heads * m.head_dim

    def summary(self) -> dict:
        """JSON-ready figures: the engine's timing, link bytes, per-worker breakdown, recoveries."""
        out = run_summary(self.engine)
        out.update(
            system="lamina",
            compute_workers=self.config.compute_workers,
            attention_workers=self.config.attention_workers,
            prefill_workers=self.config.prefill_workers,
            pipeline_batches=self.config.pipeline_batches,
            attention_split=self.config.attention_split,
            link_payload_bytes_per_token_per_layer=self.link_payload_bytes_per_token_per_layer,
            link_header_bytes_per_token_per_layer=self.link_header_bytes_per_token_per_layer,
            expected_link_bytes_per_token_per_layer=self.expected_link_bytes_per_token_per_layer,
            header_bytes_per_message=self.header_bytes_per_message,
            traffic={t.kind: asdict(t) for t in self.traffic},
            workers=[_worker_summary(w) for w in self.workers],
            recoveries=[{**asdict(r), "recovery_s": r.recovery_s} for r in self.recoveries],
            # included in decode_s (or the prefill time) of the steps that failed; subtract to compare
            total_recovery_s=self.recovery_s,
        )
        return out


def _worker_summary(w: WorkerTimes) -> dict:
    row = {"rank": w.rank, "role": w.role, "wall_s": w.wall_s}
    row.update({f"{c}_s": w.total(c) for c in CATEGORIES})
    row["idle_share"] = w.share("idle")
    return row


# ---- traffic counts and the "stats" message (a worker's figures, as two tensors for rank 0) -------


def sent_by_kind(transport) -> dict[str, list[int]]:
    """kind -> [messages, payload bytes, header bytes] this endpoint sent (receivers are not counted)."""
    return {
        k: [s.messages_sent, s.payload_bytes_sent, s.header_bytes_sent]
        for k, s in transport.stats.by_kind.items()
    }


def add_traffic(acc: dict[str, list[int]], more: dict[str, list[int]]) -> None:
    """Adds the counts of `more` into `acc` (kind -> [messages, payload bytes, header bytes])."""
    for kind, values in more.items():
        row = acc.setdefault(kind, [0, 0, 0])
        for i, v in enumerate(values):
            row[i] += int(v)


def steps_to_tensor(steps: Sequence[StepTimes]) -> torch.Tensor:
    rows = [[s.step_id, STEP_KINDS.index(s.kind), *(getattr(s, f"{c}_s") for c in CATEGORIES)] for s in steps]
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 2 + len(CATEGORIES))


def steps_from_tensor(table: torch.Tensor) -> tuple[StepTimes, ...]:
    return tuple(StepTimes(int(r[0]), STEP_KINDS[int(r[1])], *r[2:]) for r in table.tolist())


def traffic_to_tensor(traffic: dict[str, list[int]]) -> torch.Tensor:
    return torch.tensor([traffic.get(k, [0, 0, 0]) for k in KINDS], dtype=torch.int64)  # (len(KINDS), 3)


def traffic_from_tensor(table: torch.Tensor) -> dict[str, list[int]]:
    return {k: row for k, row in zip(KINDS, table.tolist(), strict=True) if any(row)}
