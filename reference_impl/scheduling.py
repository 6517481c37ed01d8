"""Scheduling policies of the engine: which requests run in each iteration and how much KV they hold.

reserve-all  (the default) a request is admitted first-come first-served once it has arrived, and only
             when the KV cache can reserve its prompt plus `max_new_tokens` tokens, so a running request
             never runs out of KV and nothing is preempted; the queue head blocks those behind it.
vllm         vLLM's policy, with the names and semantics of the simulator's scheduler `vllm`
             (lamina_bench/model/scheduler.py, model/paged_replay.py): KV in blocks of `block_size`
             tokens allocated as tokens are written; a waiting request is admitted when the blocks of its
             prompt are free; a running request takes a new block every `block_size` tokens; at most
             `max_num_seqs` requests run and at most `max_num_batched_tokens` tokens are computed per
             iteration (decodes count one each). When a decode step needs more blocks than are free, the
             most recently admitted running request is preempted by recompute, until the rest fit: its
             blocks are freed, it goes back to the front of the waiting queue, and when admitted again it
             prefills prompt + the tokens it had generated (sampling the next one) and goes on decoding.
             An iteration that preempted admits nobody. Prefill is whole-prompt: a request is admitted
             only when its whole prefill (prompt + generated tokens) fits in the iteration's token budget
             left after the decodes, so the queue head waits where vLLM V1 would prefill a chunk of it
             (the simulator's `chunked` mode; identical whenever every prefill fits the budget).
             A request that could never run is rejected before any work: its prompt + max_new_tokens
             exceed the whole cache (so a request alone never preempts itself), or its longest prefill,
             prompt + max_new_tokens - 1 tokens after a preemption, exceeds max_num_batched_tokens.

One engine iteration (engine.Engine.run): arrivals join the waiting queue; `decode_batch` gives the
running requests that decode one token each (vllm: after any preemption, with their new blocks taken);
then `admit` takes requests from the queue head, which prefill and sample one token each; finished
requests are retired (their KV freed) at the end of the iteration, and under reserve-all also right
after the decode, so their KV already serves the admissions of the same iteration.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from reference_impl.errors import ConfigError

SCHEDULERS = ("reserve-all", "vllm")

# vLLM's defaults (spec: vLLM's source), the same as the simulator's (lamina_bench/model/scheduler.py):
# max_num_seqs 256 and max_num_batched_tokens 8192, vllm/engine/arg_utils.py EngineArgs.get_batch_defaults
# (2025; the OpenAI server on an H100-class GPU gets 8192 tokens, 256 sequences is the smaller cap).
VLLM_MAX_NUM_SEQS = 256
VLLM_MAX_NUM_BATCHED_TOKENS = 8192


@dataclass(frozen=True)
class SchedulerConfig:
    """A policy by name and its caps (None: vLLM's default; reserve-all takes no caps)."""

    name: str = "reserve-all"
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.name not in SCHEDULERS:
            raise ConfigError(f"unknown scheduler {self.name!r}; valid: {', '.join(SCHEDULERS)}")
        given = [k for k in ("max_num_seqs", "max_num_batched_tokens") if getattr(self, k) is not None]
        if self.name == "reserve-all" and given:
            names = ", ".join("--" + k.replace("_", "-") for k in given)
            raise ConfigError(f"{names} apply to --scheduler vllm only (reserve-all has no such caps)")
        for knob in given:
            value = getattr(self, knob)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{knob.replace('_', '-')} must be an integer >= 1, got {value!r}")
        if self.name == "vllm" and self.token_budget < self.seq_cap:  # vLLM's SchedulerConfig rejects it too
            raise ConfigError(
                f"--max-num-batched-tokens ({self.token_budget}) must be >= --max-num-seqs ({self.seq_cap}): "
                "every running request decodes one token per iteration"
            )

    @property
    def seq_cap(self) -> int:
        return VLLM_MAX_NUM_SEQS if self.max_num_seqs is None else self.max_num_seqs

    @property
    def token_budget(self) -> int:
        return (
            VLLM_MAX_NUM_BATCHED_TOKENS
            if self.max_num_batched_tokens is None
            else self.max_num_batched_tokens
        )


class RequestLike(Protocol):
    request_id: int
    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    arrival_step: int


class KVPool(Protocol):
    """The KV questions a policy asks an executor (kv_accounting.KVAccounting answers them)."""

    def kv_block_size(self) -> int: ...
    def kv_free_blocks(self) -> int: ...
    def kv_capacity_tokens(self) -> int: ...
    def can_reserve(self, num_tokens: int) -> bool: ...
    def reserve(self, seq_id: int, num_tokens: int) -> None:
        """Makes seq_id own blocks for num_tokens tokens in all (a new sequence, or one that grows)."""
        ...

    def free(self, seq_id: int) -> None: ...


@dataclass
class RequestState:
    """A request being served: what it has generated and how often it was preempted."""

    request: RequestLike
    admitted_step: int = -1  # first admission; -1 = not yet
    output_ids: list[int] = field(default_factory=list)
    token_times_s: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    preemptions: int = 0
    recomputed_tokens: int = 0  # KV tokens thrown away by preemptions (computed again when re-admitted)

    @property
    def seq_id(self) -> int:
        return self.request.request_id

    @property
    def prefill_ids(self) -> list[int]:
        """What an admission prefills: the prompt, and after a preemption the tokens generated before."""
        return [*self.request.prompt_ids, *self.output_ids]

    @property
    def kv_tokens(self) -> int:
        """Tokens whose KV a decoding request holds: all but the last sampled one (written by its decode)."""
        return len(self.request.prompt_ids) + len(self.output_ids) - 1


class WaitingQueue:
    """Requests not yet arrived (in arrival order) and the arrived ones waiting for admission, FIFO; a
    preempted request goes back to the front."""

    def __init__(self, requests: Iterable[RequestLike]) -> None:
        # stable sort: FIFO among equal arrivals
        self._future = deque(RequestState(r) for r in sorted(requests, key=lambda r: r.arrival_step))
        self.waiting: deque[RequestState] = deque()

    def arrive(self, step: int) -> None:
        while self._future and self._future[0].request.arrival_step <= step:
            self.waiting.append(self._future.popleft())

    def __bool__(self) -> bool:
        return bool(self._future or self.waiting)


class ReserveAll:
    """Policy reserve-all (module doc)."""

    retire_before_admission = True

    def __init__(self, kv: KVPool, max_seqs: int | None) -> None:
        self.kv = kv
        self.max_seqs = max_seqs
        self.preempted = 0

    def check(self, request: RequestLike) -> None:
        """Nothing beyond the engine's checks (the whole request fits the cache)."""

    def decode_batch(self, running: list[RequestState], queue: WaitingQueue) -> list[RequestState]:
        return list(running)

    def admit(
        self, queue: WaitingQueue, running: list[RequestState], step: int, decoded: int
    ) -> list[RequestState]:
        admitted: list[RequestState] = []
        while queue.waiting:
            if self.max_seqs is not None and len(running) + len(admitted) >= self.max_seqs:
                break
            head = queue.waiting[0]
            need = len(head.request.prompt_ids) + head.request.max_new_tokens
            if not self.kv.can_reserve(need):
                break
            self.kv.reserve(head.seq_id, need)
            head.admitted_step = step
            admitted.append(queue.waiting.popleft())
        return admitted


class VllmScheduler:
    """Policy vllm (module doc); `preempted` counts the requests preempted by the last `decode_batch`."""

    retire_before_admission = False

    def __init__(self, kv: KVPool, config: SchedulerConfig, max_batch_size: int | None) -> None:
        self.kv = kv
        self.block_size = kv.kv_block_size()
        self.max_seqs = min(config.seq_cap, max_batch_size or config.seq_cap)
        self.token_budget = config.token_budget
        self.preempted = 0

    def blocks(self, num_tokens: int) -> int:
        return math.ceil(num_tokens / self.block_size)

    def check(self, request: RequestLike) -> None:
        """ConfigError for a request that could never be admitted: its prompt's blocks exceed the cache, or
        its longest prefill (a recompute of prompt + max_new_tokens - 1 tokens) exceeds the token budget."""
        prompt = len(request.prompt_ids)
        capacity_blocks = self.kv.kv_capacity_tokens() // self.block_size
        if self.blocks(prompt) > capacity_blocks:
            raise ConfigError(
                f"request {request.request_id}: its prompt of {prompt} tokens needs {self.blocks(prompt)} "
                f"KV blocks of {self.block_size} tokens but the whole cache has {capacity_blocks}; "
                "give the cache more blocks"
            )
        longest = prompt + request.max_new_tokens - 1
        if longest > self.token_budget:
            raise ConfigError(
                f"request {request.request_id}: prefills of up to {longest} tokens (prompt + max_new_tokens - 1, "
                f"after a preemption) exceed --max-num-batched-tokens {self.token_budget}; this engine "
                "prefills whole prompts (no chunks): raise --max-num-batched-tokens"
            )

    def decode_batch(self, running: list[RequestState], queue: WaitingQueue) -> list[RequestState]:
        """Preempts the most recent running requests until the blocks this decode needs are free, takes
        them, and returns the requests that decode."""
        need = [int(s.kv_tokens % self.block_size == 0) for s in running]  # token kv_tokens opens a block
        total = sum(need)
        self.preempted = 0
        while total > self.kv.kv_free_blocks():
            victim = running.pop()
            total -= need.pop()
            self.kv.free(victim.seq_id)
            victim.preemptions += 1
            victim.recomputed_tokens += victim.kv_tokens
            queue.waiting.appendleft(victim)
            self.preempted += 1
        for s, opens_block in zip(running, need, strict=True):
            if opens_block:
                self.kv.reserve(s.seq_id, s.kv_tokens + 1)
        return list(running)

    def admit(
        self, queue: WaitingQueue, running: list[RequestState], step: int, decoded: int
    ) -> list[RequestState]:
        if self.preempted:
            return []
        budget = self.token_budget - decoded
        admitted: list[RequestState] = []
        while queue.waiting and budget > 0 and len(running) + len(admitted) < self.max_seqs:
            head = queue.waiting[0]
            tokens = len(head.prefill_ids)
            if tokens > budget or self.blocks(tokens) > self.kv.kv_free_blocks():
                break
            self.kv.reserve(head.seq_id, tokens)
            if head.admitted_step < 0:
                head.admitted_step = step
            budget -= tokens
            admitted.append(queue.waiting.popleft())
        return admitted


def make_scheduler(
    config: SchedulerConfig, kv: KVPool, max_batch_size: int | None
) -> ReserveAll | VllmScheduler:
    """The policy `config.name` over the executor's KV pool."""
    if config.name == "vllm":
        return VllmScheduler(kv, config, max_batch_size)
    return ReserveAll(kv, max_batch_size)
