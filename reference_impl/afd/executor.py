"""Rank 0 of an AFD run: the Engine's forward passes as step plans, and the serve loops of every rank.

Rank 0 runs the scheduler (engine.Engine: the homogeneous baseline's continuous batching, admission
and sampling) over an `AFDExecutor`, and is attention worker 0. Requests are split data parallel:
a request lives on the attention worker with the most free KV tokens when it is admitted (the lowest
index on a tie), and stays there. Each attention worker has num_blocks blocks; rank 0 keeps a
bookkeeping copy of every worker's allocator (kv_accounting.bookkeeping_cache), so admission sees the
pool's capacity, and forwards each reservation and free with that worker's next plan.

Per forward, rank 0 sends every other rank its plan ("ctrl"), runs its own sequences, gathers the
other attention workers' last-token hidden states ("hidden") and computes the logits.
"""

from __future__ import annotations

import torch

from reference_impl import supervisor
from reference_impl.afd.attention_side import AttentionWorker
from reference_impl.afd.expert_side import ExpertWorker
from reference_impl.afd.plan import Op, Phase, StepPlan
from reference_impl.kv_accounting import bookkeeping_cache
from reference_impl.supervisor import Stage

# How long a worker waits for rank 0's next plan (if rank 0 dies the supervisor ends the run at once).
CTRL_TIMEOUT_S = 24 * 3600.0


def begin_step(plan: StepPlan, steps: dict[Phase, int]) -> None:
    """Publishes the step to the supervisor and fires an injected test fault (faults.py), if any."""
    index = steps[plan.phase]
    steps[plan.phase] += 1
    supervisor.report(Stage.DECODE if plan.phase == Phase.DECODE else Stage.PREFILL, index)
    supervisor.fault_point(plan.phase.name.lower(), index)


class AFDExecutor:
    """engine.Executor of rank 0: KV accounting of the attention pool, one plan per rank per forward."""

    def __init__(
        self,
        worker: AttentionWorker,
        transport,
        attention_workers: int,
        expert_ranks,
        num_blocks: int,
        block_size: int,
        micro_batches: int,
    ) -> None:
        self.worker = worker
        self.micro_batches = micro_batches  # per decode step (a prefill runs as one)
        self.transport = transport
        self.caches = [bookkeeping_cache(num_blocks, block_size) for _ in range(attention_workers)]
        self.expert_ranks = list(expert_ranks)
        self.max_position = worker.model.config.max_position
        self.owner: dict[int, int] = {}  # sequence -> attention worker
        self.prefilled: set[int] = set()
        self._reserves: list[list[tuple[int, int]]] = [[] for _ in self.caches]
        self._frees: list[list[int]] = [[] for _ in self.caches]
        self._step_id = 0
        self._steps = {Phase.PREFILL: 0, Phase.DECODE: 0}
        self.tokens = 0  # tokens through the model (prefill and decode)

    # -- KV accounting (engine.Executor) --
    def kv_capacity_tokens(self) -> int:
        return self.caches[0].capacity_tokens  # a request lives on one attention worker

    def kv_free_tokens(self) -> int:
        return sum(c.free_tokens for c in self.caches)

    def can_reserve(self, num_tokens: int) -> bool:
        return any(c.can_reserve(num_tokens) for c in self.caches)

    def reserve(self, seq_id: int, num_tokens: int) -> None:
        fits = [a for a, c in enumerate(self.caches) if c.can_reserve(num_tokens)]
        worker = max(fits, key=lambda a: (self.caches[a].free_tokens, -a))
        self.caches[worker].reserve(seq_id, num_tokens)
        self.owner[seq_id] = worker
        self._reserves[worker].append((seq_id, num_tokens))

    def free(self, seq_id: int) -> None:
        worker = self.owner.pop(seq_id)
        self.caches[worker].free(seq_id)
        self.prefilled.discard(seq_id)
        self._frees[worker].append(seq_id)

    def agree(self, token_ids: torch.Tensor) -> torch.Tensor:
        return token_ids  # only rank 0 samples

    # -- forward --
    @torch.inference_mode()
    def forward(self, seq_ids: list[int], tokens: list[list[int]]) -> torch.Tensor:
        phase = Phase.DECODE if all(s in self.prefilled for s in seq_ids) else Phase.PREFILL
        micro = self.micro_batches if phase == Phase.DECODE else 1
        plans = [self._plan(a, phase, micro, seq_ids, tokens) for a in range(len(self.caches))]
        for a in range(1, len(plans)):
            self.transport.send(a, "ctrl", [plans[a].encode()])
        expert_plan = StepPlan(Op.STEP, self._step_id, phase, micro).encode()
        for rank in self.expert_ranks:
            self.transport.send(rank, "ctrl", [expert_plan])
        self._step_id += 1
        begin_step(plans[0], self._steps)
        parts = [self.worker.execute(plans[0])]
        parts += [self.transport.recv(a, "hidden")[0] for a in range(1, len(plans))]
        hidden = torch.empty(len(seq_ids), parts[0].shape[1], dtype=parts[0].dtype)  # (B, d) in seq_ids order
        for a, part in enumerate(parts):
            rows = [i for i, s in enumerate(seq_ids) if self.owner[s] == a]
            hidden[rows] = part
        self.prefilled.update(seq_ids)
        self.tokens += sum(len(t) for t in tokens)
        return self.worker.model.logits(hidden)  # (B, V) fp32

    def _plan(
        self, a: int, phase: Phase, micro: int, seq_ids: list[int], tokens: list[list[int]]
    ) -> StepPlan:
        mine = [i for i, s in enumerate(seq_ids) if self.owner[s] == a]
        plan = StepPlan(
            Op.STEP,
            self._step_id,
            phase,
            micro,
            seq_ids=tuple(seq_ids[i] for i in mine),
            query_lens=tuple(len(tokens[i]) for i in mine),
            tokens=tuple(t for i in mine for t in tokens[i]),
            reserves=tuple(self._reserves[a]),
            frees=tuple(self._frees[a]),
        )
        self._reserves[a], self._frees[a] = [], []
        return plan

    def stop(self) -> None:
        """STOP to every other rank (also after a failure: best effort, nothing waited for)."""
        stop = StepPlan(Op.STOP).encode()
        for rank in [*range(1, len(self.caches)), *self.expert_ranks]:
            self.transport.send(rank, "ctrl", [stop])


def serve_worker(worker: AttentionWorker | ExpertWorker, transport) -> None:
    """Every rank but 0: runs rank 0's plans until STOP; an attention worker sends back its hidden states."""
    steps = {Phase.PREFILL: 0, Phase.DECODE: 0}
    while True:
        plan = StepPlan.decode(transport.recv(0, "ctrl", CTRL_TIMEOUT_S)[0])
        if plan.op == Op.STOP:
            supervisor.report(Stage.SHUTDOWN)
            supervisor.fault_point("shutdown")
            return
        begin_step(plan, steps)
        out = worker.execute(plan)
        if isinstance(worker, AttentionWorker):
            transport.send(0, "hidden", [out])
