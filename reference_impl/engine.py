"""Decode engines with continuous batching over a paged KV cache.

`Engine` owns the requests: admission, sampling, retirement, per-iteration timing. How a batch is run
is an `Executor`'s business: `homogeneous.HomogeneousExecutor` runs the whole model on one device (or
one tensor-parallel group), the baseline every Lamina number is compared with; the Lamina runtime
supplies an executor that ships attention to attention workers (`lamina.executor.LaminaExecutor`).
Both see exactly the same scheduling, and both answer the engine's KV questions the same way
(kv_accounting.py).

Scheduling policy (stated, so the simulator can copy it): requests are admitted first-come first-served
once they have arrived; a request is admitted only when the KV cache can reserve its prompt plus
`max_new_tokens` tokens, so a running request never runs out of KV and nothing is preempted; the queue
head blocks those behind it (no reordering). One iteration = one decode step for every running request,
then retirement of finished requests (their KV is freed), then admission and prefill of new requests,
which yields their first token; a request finished by that token (max_new_tokens 1, or a stop id) is
retired at once, so it is never decoded.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from reference_impl.errors import ConfigError


@dataclass(frozen=True)
class Request:
    request_id: int
    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    arrival_step: int = 0  # first engine iteration at which the request may be admitted

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ConfigError(
                f"request {self.request_id}: empty prompt (prompt_ids must hold at least one id)"
            )
        if self.max_new_tokens < 1:
            raise ConfigError(
                f"request {self.request_id}: max_new_tokens must be >= 1, got {self.max_new_tokens}"
            )
        if self.arrival_step < 0:
            raise ConfigError(
                f"request {self.request_id}: arrival_step must be >= 0, got {self.arrival_step}"
            )


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy (argmax)
    seed: int = 0
    stop_token_ids: tuple[int, ...] = ()  # e.g. the checkpoint's eos ids; empty = always max_new_tokens

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")


@dataclass(frozen=True)
class IterationRecord:
    step: int
    decode_seqs: int  # requests that produced a token in the decode phase
    prefill_seqs: int  # requests admitted and prefilled in this iteration
    prefill_tokens: int
    waiting: int  # arrived requests still queued after admission
    free_kv_tokens: int
    decode_s: float
    prefill_s: float
    wall_s: float


@dataclass(frozen=True)
class Completion:
    request_id: int
    prompt_ids: tuple[int, ...]
    output_ids: tuple[int, ...]
    finish_reason: str  # "length" | "stop"
    admitted_step: int
    token_times_s: tuple[float, ...]  # seconds since the run started at which each output token existed


@dataclass(frozen=True)
class EngineRun:
    completions: list[Completion]  # in the order the requests were given
    iterations: list[IterationRecord]
    wall_s: float

    @property
    def generated_tokens(self) -> int:
        return sum(len(c.output_ids) for c in self.completions)

    @property
    def decode_tokens(self) -> int:
        return sum(it.decode_seqs for it in self.iterations)

    @property
    def decode_s(self) -> float:
        return sum(it.decode_s for it in self.iterations)

    @property
    def mean_decode_batch(self) -> float | None:
        batches = [it.decode_seqs for it in self.iterations if it.decode_seqs]
        return sum(batches) / len(batches) if batches else None


def run_summary(run: EngineRun) -> dict:
    """Timing summary of a run (measured on this machine), for --json output."""
    decode_tok_per_s = run.decode_tokens / run.decode_s if run.decode_s > 0 else math.nan
    return {
        "source": "measured",
        "requests": len(run.completions),
        "generated_tokens": run.generated_tokens,
        "iterations": len(run.iterations),
        "wall_s": run.wall_s,
        "decode_tokens": run.decode_tokens,
        "decode_s": run.decode_s,
        "decode_tok_per_s": decode_tok_per_s,
        "mean_decode_batch": run.mean_decode_batch,
        "max_waiting": max(it.waiting for it in run.iterations),
    }


class Executor(Protocol):
    """Runs forward passes and owns the KV cache (capacity in tokens, reservations per sequence)."""

    max_position: int

    def kv_capacity_tokens(self) -> int: ...
    def kv_free_tokens(self) -> int: ...
    def can_reserve(self, num_tokens: int) -> bool: ...
    def reserve(self, seq_id: int, num_tokens: int) -> None: ...
    def free(self, seq_id: int) -> None: ...

    def forward(self, seq_ids: list[int], tokens: list[list[int]]) -> torch.Tensor:
        """Appends `tokens[i]` to sequence `seq_ids[i]`; returns fp32 logits (B, vocab) of each last token."""
        ...

    def agree(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Makes every process of a parallel group use rank 0's sampled ids (identity on one process)."""
        ...


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, V) fp32 -> token ids (B,) int64: argmax when greedy, else softmax(logits / T) draws."""
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(logits.device)


@dataclass
class _Running:
    request: Request
    admitted_step: int
    output_ids: list[int] = field(default_factory=list)
    token_times_s: list[float] = field(default_factory=list)
    finish_reason: str | None = None


class Engine:
    """Continuous batching driver; `run` serves a list of requests to completion."""

    def __init__(
        self, executor: Executor, sampling: SamplingParams | None = None, max_batch_size: int | None = None
    ):
        if max_batch_size is not None and max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.executor = executor
        self.sampling = sampling or SamplingParams()
        self.max_batch_size = max_batch_size

    def run(self, requests: Sequence[Request]) -> EngineRun:
        self._validate(requests)
        generator = torch.Generator().manual_seed(self.sampling.seed)
        pending = deque(sorted(requests, key=lambda r: r.arrival_step))  # stable: FIFO among equal arrivals
        running: list[_Running] = []
        done: dict[int, _Running] = {}
        iterations: list[IterationRecord] = []
        start = time.perf_counter()
        step = 0
        while pending or running:
            t0 = time.perf_counter()
            decode_seqs = len(running)
            if running:
                tokens = [[seq.output_ids[-1]] for seq in running]
                self._advance(running, tokens, generator, start)
            t1 = time.perf_counter()
            self._retire(running, done)
            admitted = self._admit(pending, running, step)
            if admitted:
                self._advance(admitted, [list(s.request.prompt_ids) for s in admitted], generator, start)
                running.extend(admitted)
                self._retire(running, done)  # finished on the prefill token (max_new_tokens 1, or a stop id)
            t2 = time.perf_counter()
            waiting = sum(1 for r in pending if r.arrival_step <= step)
            iterations.append(
                IterationRecord(
                    step=step,
                    decode_seqs=decode_seqs,
                    prefill_seqs=len(admitted),
                    prefill_tokens=sum(len(s.request.prompt_ids) for s in admitted),
                    waiting=waiting,
                    free_kv_tokens=self.executor.kv_free_tokens(),
                    decode_s=t1 - t0,
                    prefill_s=t2 - t1,
                    wall_s=t2 - t0,
                )
            )
            step += 1
        wall_s = time.perf_counter() - start
        completions = [self._completion(done[r.request_id]) for r in requests]
        return EngineRun(completions=completions, iterations=iterations, wall_s=wall_s)

    # ---- helpers -------------------------------------------------------------------------------

    def _validate(self, requests: Sequence[Request]) -> None:
        if not requests:
            raise ConfigError("no requests to serve")
        ids = [r.request_id for r in requests]
        if len(set(ids)) != len(ids):
            raise ConfigError("request ids must be unique")
        capacity = self.executor.kv_capacity_tokens()
        for r in requests:
            total = len(r.prompt_ids) + r.max_new_tokens
            if total > self.executor.max_position:
                raise ConfigError(
                    f"request {r.request_id}: prompt ({len(r.prompt_ids)}) + max_new_tokens ({r.max_new_tokens}) "
                    f"= {total} tokens exceeds the model's maximum of {self.executor.max_position} positions"
                )
            if total > capacity:
                raise ConfigError(
                    f"request {r.request_id} needs {total} KV tokens but the whole cache holds {capacity}; "
                    "give the cache more blocks"
                )

    def _retire(self, running: list[_Running], done: dict[int, _Running]) -> None:
        """Moves finished requests from `running` to `done` and frees their KV."""
        for seq in [s for s in running if s.finish_reason]:
            running.remove(seq)
            self.executor.free(seq.request.request_id)
            done[seq.request.request_id] = seq

    def _admit(self, pending: deque[Request], running: list[_Running], step: int) -> list[_Running]:
        admitted: list[_Running] = []
        while pending and pending[0].arrival_step <= step:
            if self.max_batch_size is not None and len(running) + len(admitted) >= self.max_batch_size:
                break
            req = pending[0]
            need = len(req.prompt_ids) + req.max_new_tokens
            if not self.executor.can_reserve(need):
                break
            self.executor.reserve(req.request_id, need)
            admitted.append(_Running(request=pending.popleft(), admitted_step=step))
        return admitted

    def _advance(self, seqs: list[_Running], tokens: list[list[int]], generator, start: float) -> None:
        logits = self.executor.forward([s.request.request_id for s in seqs], tokens)
        next_ids = self.executor.agree(sample(logits, self.sampling, generator)).tolist()
        now = time.perf_counter() - start
        for seq, tok in zip(seqs, next_ids, strict=True):
            seq.output_ids.append(tok)
            seq.token_times_s.append(now)
            if tok in self.sampling.stop_token_ids:
                seq.finish_reason = "stop"
            elif len(seq.output_ids) >= seq.request.max_new_tokens:
                seq.finish_reason = "length"

    @staticmethod
    def _completion(seq: _Running) -> Completion:
        return Completion(
            request_id=seq.request.request_id,
            prompt_ids=seq.request.prompt_ids,
            output_ids=tuple(seq.output_ids),
            finish_reason=seq.finish_reason or "length",
            admitted_step=seq.admitted_step,
            token_times_s=tuple(seq.token_times_s),
        )
