"""Decode engines with continuous batching over a paged KV cache.

`Engine` owns the requests: admission, sampling, retirement, per-iteration timing. How a batch is run
is an `Executor`'s business: `homogeneous.HomogeneousExecutor` runs the whole model on one device (or
one tensor-parallel group), the baseline every Lamina number is compared with; the Lamina runtime
supplies an executor that ships attention to attention workers (`lamina.executor.LaminaExecutor`).
Both see exactly the same scheduling, and both answer the engine's KV questions the same way
(kv_accounting.py).

Scheduling policies (scheduling.py, stated so the simulator can copy them): `reserve-all` (the default)
admits a request first-come first-served only when the KV cache can reserve its prompt plus
`max_new_tokens` tokens, so nothing is ever preempted; `vllm` allocates KV blocks as tokens are written,
admits on the blocks of the prompt and preempts the most recently admitted request by recompute when a
decode step runs out of blocks. One iteration = one decode step for every running request, then admission
and prefill of requests from the queue head, which yields their next token (the first one, or after a
preemption the one after those already generated), then retirement of finished requests (their KV is
freed; reserve-all also retires right after the decode). A request finished by its prefill token
(max_new_tokens 1, or a stop id) is retired at once, so it is never decoded. Tokens do not depend on the
policy: a preempted request recomputes exactly the sequence it had.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from reference_impl.errors import ConfigError
from reference_impl.scheduling import KVPool, RequestState, SchedulerConfig, WaitingQueue, make_scheduler


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
    preemptions: int = 0  # running requests preempted by recompute before this iteration's decode (vllm)


@dataclass(frozen=True)
class Completion:
    request_id: int
    prompt_ids: tuple[int, ...]
    output_ids: tuple[int, ...]
    finish_reason: str  # "length" | "stop"
    admitted_step: int  # first admission
    token_times_s: tuple[float, ...]  # seconds since the run started at which each output token existed
    preemptions: int = 0  # times the request was preempted by recompute
    recomputed_tokens: int = 0  # KV tokens its preemptions threw away (computed again by its re-prefills)


@dataclass(frozen=True)
class EngineRun:
    completions: list[Completion]  # in the order the requests were given
    iterations: list[IterationRecord]
    wall_s: float
    scheduler: str = "reserve-all"

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
    def preemptions(self) -> int:
        return sum(c.preemptions for c in self.completions)

    @property
    def recomputed_tokens(self) -> int:
        return sum(c.recomputed_tokens for c in self.completions)

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
        "scheduler": run.scheduler,
        "preemptions": run.preemptions,
        "recomputed_tokens": run.recomputed_tokens,
    }


class Executor(KVPool, Protocol):
    """Runs forward passes and owns the KV cache (capacity in blocks and tokens, blocks per sequence)."""

    max_position: int

    def kv_free_tokens(self) -> int: ...

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


class Engine:
    """Continuous batching driver; `run` serves a list of requests to completion under `scheduler`."""

    def __init__(
        self,
        executor: Executor,
        sampling: SamplingParams | None = None,
        max_batch_size: int | None = None,
        scheduler: SchedulerConfig | None = None,
    ):
        if max_batch_size is not None and max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.executor = executor
        self.sampling = sampling or SamplingParams()
        self.max_batch_size = max_batch_size
        self.scheduler = scheduler or SchedulerConfig()

    def run(self, requests: Sequence[Request]) -> EngineRun:
        policy = make_scheduler(self.scheduler, self.executor, self.max_batch_size)
        self._validate(requests, policy.check)
        generator = torch.Generator().manual_seed(self.sampling.seed)
        queue = WaitingQueue(requests)
        running: list[RequestState] = []  # in admission order
        done: dict[int, RequestState] = {}
        iterations: list[IterationRecord] = []
        start = time.perf_counter()
        step = 0
        while queue or running:
            queue.arrive(step)
            t0 = time.perf_counter()
            batch = policy.decode_batch(running, queue)
            if batch:
                self._advance(batch, [[s.output_ids[-1]] for s in batch], generator, start)
            t1 = time.perf_counter()
            if policy.retire_before_admission:
                self._retire(running, done)
            admitted = policy.admit(queue, running, step, len(batch))
            prefill_tokens = 0
            if admitted:
                tokens = [s.prefill_ids for s in admitted]
                prefill_tokens = sum(map(len, tokens))
                self._advance(admitted, tokens, generator, start)
                running.extend(admitted)
            self._retire(running, done)  # finished decodes, and prefills whose token ended the request
            t2 = time.perf_counter()
            iterations.append(
                IterationRecord(
                    step=step,
                    decode_seqs=len(batch),
                    prefill_seqs=len(admitted),
                    prefill_tokens=prefill_tokens,
                    waiting=len(queue.waiting),
                    free_kv_tokens=self.executor.kv_free_tokens(),
                    decode_s=t1 - t0,
                    prefill_s=t2 - t1,
                    wall_s=t2 - t0,
                    preemptions=policy.preempted,
                )
            )
            step += 1
        wall_s = time.perf_counter() - start
        completions = [self._completion(done[r.request_id]) for r in requests]
        return EngineRun(completions, iterations, wall_s, scheduler=self.scheduler.name)

    # ---- helpers -------------------------------------------------------------------------------

    def _validate(self, requests: Sequence[Request], check_policy) -> None:
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
            check_policy(r)
            if total > capacity:
                raise ConfigError(
                    f"request {r.request_id} needs {total} KV tokens but the whole cache holds {capacity}; "
                    "give the cache more blocks"
                )

    def _retire(self, running: list[RequestState], done: dict[int, RequestState]) -> None:
        """Moves finished requests from `running` to `done` and frees their KV."""
        for seq in [s for s in running if s.finish_reason]:
            running.remove(seq)
            self.executor.free(seq.seq_id)
            done[seq.seq_id] = seq

    def _advance(self, seqs: list[RequestState], tokens: list[list[int]], generator, start: float) -> None:
        logits = self.executor.forward([s.seq_id for s in seqs], tokens)
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
    def _completion(seq: RequestState) -> Completion:
        return Completion(
            request_id=seq.seq_id,
            prompt_ids=seq.request.prompt_ids,
            output_ids=tuple(seq.output_ids),
            finish_reason=seq.finish_reason or "length",
            admitted_step=seq.admitted_step,
            token_times_s=tuple(seq.token_times_s),
            preemptions=seq.preemptions,
            recomputed_tokens=seq.recomputed_tokens,
        )
