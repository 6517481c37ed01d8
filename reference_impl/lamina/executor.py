"""Rank 0's executor: the Engine's forward passes as step plans run by every rank of the Lamina layout.

Compute rank 0 runs the scheduler: `engine.Engine` (the same continuous batching and admission as the
homogeneous baseline) drives a `LaminaExecutor`, whose KV capacity is the attention pool's (every
attention worker has `num_blocks` blocks for its heads; admission counts blocks). Each forward becomes
a `StepPlan` sent to every other rank; rank 0 runs its own share (it is compute replica 0's TP rank 0),
gathers the last-token hidden states and the compute workers' statuses, and computes the logits. A
step that reports a dead worker or a poisoned output is recovered and redone (recovery.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import torch

from reference_impl import supervisor
from reference_impl.engine import Engine, SamplingParams
from reference_impl.errors import WorkerFailure
from reference_impl.kv_accounting import KVAccounting, bookkeeping_cache
from reference_impl.lamina.clock import WorkerClock
from reference_impl.lamina.compute_worker import ComputeWorker
from reference_impl.lamina.config import LaminaConfig
from reference_impl.lamina.layout import COMPUTE, PREFILL, split_batch
from reference_impl.lamina.links import Links
from reference_impl.lamina.plan import Op, Phase, StepPlan
from reference_impl.lamina.prefill_pool import PrefillPool
from reference_impl.lamina.recovery import Attempt, Recovery
from reference_impl.lamina.results import (
    LinkTraffic,
    WorkerTimes,
    add_traffic,
    steps_from_tensor,
    traffic_from_tensor,
)
from reference_impl.scheduling import SchedulerConfig
from reference_impl.supervisor import Stage

MAX_RECOVERIES_PER_STEP = 3


class LaminaExecutor(KVAccounting):
    """engine.Executor of compute rank 0: KV accounting of the attention pool, one StepPlan per forward.

    KV accounting uses a bookkeeping-only cache (kv_accounting.bookkeeping_cache): the same allocator
    code as the attention workers' caches, which all have `num_blocks` blocks, so its answers are the
    pool's. Every reservation and free is forwarded with the next plan.
    """

    def __init__(
        self,
        worker: ComputeWorker,
        fabric,
        cfg: LaminaConfig,
        num_blocks: int,
        clock: WorkerClock,
        respawn: Callable[[list[int], int], None] | None = None,
    ) -> None:
        super().__init__(bookkeeping_cache(num_blocks, cfg.block_size))
        self.worker = worker
        self.fabric = fabric
        self.cfg = cfg
        self.layout = cfg.layout
        self.clock = clock
        self.max_position = worker.model.config.max_position
        self._reservations: dict[int, int] = {}  # seq -> tokens reserved (what a rebuild re-reserves)
        self._history: dict[int, list[int]] = {}  # seq -> tokens whose KV the pool holds
        self._reserves: list[tuple[int, int]] = []  # since the last plan
        self._frees: list[int] = []
        self._step_id = 0
        self._steps = {Phase.PREFILL: 0, Phase.DECODE: 0}  # steps begun per phase, redos not counted
        self._killed = False
        self.decode_token_layers = 0
        self.prefills = PrefillPool(self.layout) if self.layout.prefill_workers else None
        self.recovery = Recovery(
            self._run, fabric, self.layout, clock, worker.model, respawn, time.perf_counter(), self._drain
        )
        self.traffic: tuple[LinkTraffic, ...] = ()  # filled by stop()

    # -- KV accounting (engine.Executor): forwarded to the workers with the next plan --
    def reserve(self, seq_id: int, num_tokens: int) -> None:
        super().reserve(seq_id, num_tokens)  # a new sequence, or more blocks for a decoding one (vllm)
        self._reservations[seq_id] = num_tokens
        self._history.setdefault(seq_id, [])
        self._reserves.append((seq_id, num_tokens))

    def free(self, seq_id: int) -> None:
        super().free(seq_id)
        del self._reservations[seq_id]
        del self._history[seq_id]
        self._frees.append(seq_id)

    def agree(self, token_ids: torch.Tensor) -> torch.Tensor:
        return token_ids  # only rank 0 samples; the others get the ids with the next plan

    # -- forward --
    @torch.inference_mode()
    def forward(self, seq_ids: list[int], tokens: list[list[int]]) -> torch.Tensor:
        plan = self._next_plan(seq_ids, tokens)
        attempt = self._run(plan)
        for _ in range(MAX_RECOVERIES_PER_STEP):
            if attempt.ok:
                break
            attempt = self.recovery.recover(plan, attempt, self._history, self._reservations)
        if not attempt.ok:
            raise WorkerFailure(
                f"step {plan.step_id} failed {MAX_RECOVERIES_PER_STEP + 1} times (ranks "
                f"{sorted(attempt.dead)} dead); giving up"
            )
        for seq_id, chunk in zip(seq_ids, tokens, strict=True):
            self._history[seq_id].extend(chunk)
        with self.clock.section("dense"):
            logits = self.worker.model.logits(attempt.hidden)  # (B, V) fp32
        self.clock.mark_step(plan.step_id, "prefill" if plan.phase == Phase.PREFILL else "decode")
        return logits

    def _next_plan(self, seq_ids: list[int], tokens: list[list[int]], op: Op = Op.STEP) -> StepPlan:
        decode = all(len(t) == 1 for t in tokens) and all(self._history[s] for s in seq_ids)
        if op == Op.STEP and not decode and self.prefills is not None:
            raise RuntimeError("with prefill workers, prompts go to dispatch_prefill, not forward")
        n = self.layout.pipeline_batches if decode else 1
        plan = StepPlan(
            op=op,
            step_id=self._step_id,
            phase=Phase.DECODE if decode else Phase.PREFILL,
            seq_ids=tuple(seq_ids),
            query_lens=tuple(len(t) for t in tokens),
            positions=tuple(len(self._history[s]) for s in seq_ids),
            micro_batches=split_batch(len(seq_ids), n) if decode else (),
            reserves=tuple(self._reserves),
            frees=tuple(self._frees),
            tokens=tuple(t for chunk in tokens for t in chunk),
        )
        self._reserves, self._frees = [], []
        self._step_id += 1
        return plan

    def _broadcast(self, plan: StepPlan, links: Links) -> None:
        """The plan to every compute and attention worker; prefill workers get only the stop."""
        compute_msg, attention_msg = plan.encode(), plan.for_attention().encode()
        for rank in range(1, self.layout.world_size):
            role = self.layout.role(rank)
            if role == PREFILL and plan.op != Op.STOP:
                continue
            links.send(rank, "ctrl", [compute_msg if role == COMPUTE else attention_msg])

    # -- prefill workers (prefill_pool.py): prompts run there while decode steps go on --
    def dispatch_prefill(self, seq_ids: list[int], prompts: list[list[int]]) -> None:
        """Sends the prompts to the prefill workers (one job per worker chosen) and tells every
        attention worker which job's KV to expect from where."""
        links = self.fabric.links(self.clock)
        for worker, picked in self.prefills.assign([len(p) for p in prompts]):
            plan = self._next_plan([seq_ids[i] for i in picked], [prompts[i] for i in picked], Op.PREFILL)
            rank = self.layout.prefill_rank(worker)
            plan = replace(plan, targets=(rank,))
            supervisor.report(Stage.PREFILL, self._steps[Phase.PREFILL])
            links.send(rank, "ctrl", [plan.encode()])
            for attention in self.layout.attention_ranks():
                links.send(attention, "ctrl", [plan.for_attention().encode()])
            supervisor.fault_point("prefill", self._steps[Phase.PREFILL])
            self._steps[Phase.PREFILL] += 1
            self.prefills.add(plan, worker, links.irecv(rank, "prefill_out"))

    def finished_prefills(self, wait: bool) -> list[tuple[list[int], torch.Tensor]]:
        """(sequence ids, logits (B, V) of their last prompt tokens) of every prefill job done, in
        dispatch order; with `wait`, waits for the oldest job if none is done. Their KV is in the pool."""
        done = self.prefills.take_done(wait)
        self._hold_prompts(done)
        return done

    def _hold_prompts(self, done: list[tuple[list[int], torch.Tensor]]) -> None:
        """The pool holds the KV of these jobs' prompts now (what a rebuild recomputes)."""
        for seq_ids, _ in done:
            for seq_id in seq_ids:
                if seq_id in self.prefills.prompts:
                    self._history[seq_id] = list(self.prefills.prompts.pop(seq_id))

    def _drain(self) -> None:
        """Before a regroup: every prefill job in flight ends (its logits kept for finished_prefills),
        so no prompt KV of the old epoch is still on its way."""
        if self.prefills is not None:
            self._hold_prompts(self.prefills.drain())

    def _run(self, plan: StepPlan) -> Attempt:
        """One attempt of a step (or a rebuild) on every rank; failures are reported, not raised."""
        started = time.perf_counter()
        links = self.fabric.links(self.clock)
        first_attempt = plan.op == Op.STEP and not plan.redo
        index = self._steps[plan.phase]
        if first_attempt:
            supervisor.report(Stage.DECODE if plan.phase == Phase.DECODE else Stage.PREFILL, index)
        self._broadcast(plan, links)
        if plan.op == Op.STEP and plan.phase == Phase.DECODE:
            self.decode_token_layers += len(plan.seq_ids) * self.worker.num_layers
        if first_attempt:  # right after the plan went out: a victim dies mid-step
            self._maybe_kill(plan, index)
            supervisor.fault_point(plan.phase.name.lower(), index)
            self._steps[plan.phase] += 1
        own = self.worker.execute(plan, links)
        attempt = Attempt(hidden=None, poisoned=own.poisoned)
        if plan.op == Op.STEP:
            attempt.hidden = self._gather_hidden(plan, own.hidden, links)
        for rank in range(1, self.layout.compute_workers):
            status = links.recv(rank, "status")
            if status is None:
                attempt.dead.add(rank)
            else:
                values = status[0].tolist()
                attempt.poisoned |= bool(values[0])
                attempt.dead.update(values[1:])
        links.flush()
        attempt.dead |= links.dead
        attempt.elapsed_s = time.perf_counter() - started
        return attempt

    def _gather_hidden(self, plan: StepPlan, own: dict, links: Links) -> torch.Tensor | None:
        """Last-token hidden states (B, d) of every micro-batch, from the replicas that ran the last slice."""
        if plan.phase == Phase.PREFILL:
            return own.get(0)
        parts = []
        for j, (start, stop) in enumerate(plan.micro_batch_bounds()):
            if start == stop:
                continue
            owner = self.layout.slice_replica(j, self.worker.num_layers)
            if owner == self.worker.replica:
                part = own.get(j)
            else:
                got = links.recv(self.layout.compute_rank(owner, 0), "hidden")
                part = None if got is None else got[0]
            if part is None:
                return None
            parts.append(part)
        return torch.cat(parts)

    def _maybe_kill(self, plan: StepPlan, index: int) -> None:
        """Test hook cfg.kill_at = (rank, s): SIGKILL that rank at the first attempt of decode step s."""
        if self.cfg.kill_at is None or self._killed or plan.phase != Phase.DECODE:
            return
        rank, at_step = self.cfg.kill_at
        if index == at_step:
            self.fabric.kill(rank)
            self._killed = True

    # -- end of the run --
    def abort(self) -> None:
        """After a failure on rank 0: STOP to every rank, best effort, without waiting for anything."""
        self._broadcast(StepPlan(op=Op.STOP), self.fabric.links(self.clock))

    def stop(self) -> list[WorkerTimes]:
        """Stops every worker and collects their time breakdowns and traffic (merged into self.traffic)."""
        links = self.fabric.links(self.clock)
        self._broadcast(StepPlan(op=Op.STOP), links)
        workers, traffic = [], {}
        for rank in range(1, self.layout.world_size):
            got = links.recv(rank, "stats")
            if got is None:
                continue  # a worker that died at the very end: its figures are lost
            workers.append(WorkerTimes(rank, self.layout.role(rank), steps_from_tensor(got[0])))
            add_traffic(traffic, traffic_from_tensor(got[1]))
        links.flush()
        self.clock.mark_step(self._step_id, "stop")
        add_traffic(traffic, self.fabric.traffic())
        self.traffic = tuple(LinkTraffic(k, *v) for k, v in sorted(traffic.items()) if any(v))
        return [WorkerTimes(0, COMPUTE, tuple(self.clock.steps)), *workers]


class LaminaEngine(Engine):
    """engine.Engine over a LaminaExecutor: the baseline's continuous batching, scheduling policy and
    sampling unchanged, with KV admission (and, under vllm, growth and preemption) by the attention pool's
    blocks."""

    def __init__(
        self,
        executor: LaminaExecutor,
        sampling: SamplingParams | None = None,
        max_batch_size: int | None = None,
        scheduler: SchedulerConfig | None = None,
    ) -> None:
        if not isinstance(executor, LaminaExecutor):
            raise TypeError(f"LaminaEngine needs a LaminaExecutor, got {type(executor).__name__}")
        super().__init__(executor, sampling, max_batch_size, scheduler)
