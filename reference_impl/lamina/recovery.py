"""Recovery from dead workers, run by rank 0 when a step reports one (a failed or timed-out receive, a
failed send).

Rank 0: (0) with prefill workers, waits for their jobs in flight, so every prompt's KV has reached the
live attention workers (which write all of it into their caches before they acknowledge in (1)); (1)
tells every live rank to regroup (REGROUP), collects their acks on the old group and only then lets
everyone leave it, so no message of the old epoch is lost; (2) has the launcher start a
replacement process for each dead rank (on rank 0's machine) that loads the checkpoint (compute) or
allocates an empty cache (attention); (3) everyone joins the group of the new epoch (fabric.py); (4)
for replaced attention workers, replica 0 recomputes the KV of every running request from its prompt
and generated tokens and ships it (REBUILD); (5) the failed step is redone; survivors reuse that
step's cache slots, so the tokens are exactly those of a run without the failure.

A hung rank is found by the spawning launcher's supervisor (no heartbeat and no CPU time for
cfg.heartbeat_timeout_s) and SIGKILLed, after which rank 0 finds it dead like any other. Rank 0
publishes RECOVERY with the ranks it replaces, so that the launcher ends the run when another rank
fails meanwhile (launch.py).

Limits: rank 0 (the scheduler) cannot be replaced; a compute rank of a tensor-parallel replica cannot
either (its peers' collectives fail); a second failure during a recovery ends the run; torchrun's
agent stops every worker when one dies, so recovery needs the spawning launcher; NCCL communicators
do not survive a dead peer (CPU/gloo only). Where recovery is impossible, the run ends with one-line
WorkerFailure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from reference_impl import supervisor
from reference_impl.errors import WorkerFailure
from reference_impl.lamina.build import bind_tp_group
from reference_impl.lamina.clock import WorkerClock
from reference_impl.lamina.layout import ATTENTION, COMPUTE, Layout
from reference_impl.lamina.plan import Op, Phase, StepPlan
from reference_impl.lamina.results import RecoveryEvent
from reference_impl.supervisor import Stage


@dataclass
class Attempt:
    """The outcome of one attempt of a step on every rank; failures are recorded here, not raised."""

    hidden: torch.Tensor | None  # (B, d) last-token hidden states, None if a part is missing
    dead: set[int] = field(default_factory=set)
    poisoned: bool = False
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.hidden is not None and not self.dead and not self.poisoned


class Recovery:
    """Rank 0's recovery protocol: replace the dead ranks, refill replaced attention workers, redo the step.

    run: runs one attempt of a plan on every rank (LaminaExecutor's). respawn(ranks, epoch) starts the
    replacement processes (None: this launcher cannot replace workers). start_s: when the executor
    started, the origin of RecoveryEvent.detected_at_s.
    """

    def __init__(
        self,
        run: Callable[[StepPlan], Attempt],
        fabric,
        layout: Layout,
        clock: WorkerClock,
        model,
        respawn: Callable[[list[int], int], None] | None,
        start_s: float,
        drain: Callable[[], None] = lambda: None,
    ) -> None:
        self.run = run
        self.fabric = fabric
        self.layout = layout
        self.clock = clock
        self.model = model
        self.respawn = respawn
        self.epoch = 0
        self.events: list[RecoveryEvent] = []
        self._start = start_s
        self.drain = drain  # ends the prefill workers' jobs in flight before a regroup

    def recover(
        self, plan: StepPlan, failed: Attempt, history: dict[int, list[int]], reservations: dict[int, int]
    ) -> Attempt:
        """Recovers from the failed attempt of `plan` and returns the redone attempt.

        history: per running sequence, the tokens whose KV the pool holds; reservations: per sequence,
        the tokens reserved for it (both what a rebuilt attention worker needs).
        """
        t0 = time.perf_counter()
        dead = sorted(failed.dead)
        supervisor.report(Stage.RECOVERY, recovering=dead)  # the launcher: other failures now end the run
        if dead:
            self.drain()
            self._regroup(dead, plan.step_id)
        t1 = time.perf_counter()
        workers = [self.layout.worker_of(r) for r in dead if self.layout.role(r) == ATTENTION]
        rebuilt = self._rebuild(workers, plan.step_id, history, reservations) if workers else 0
        t2 = time.perf_counter()
        supervisor.report(Stage.DECODE if plan.phase == Phase.DECODE else Stage.PREFILL)
        attempt = self.run(replace(plan, redo=True))
        event = RecoveryEvent(
            step_id=plan.step_id,
            dead_ranks=tuple(dead),
            roles=tuple(self.layout.role(r) for r in dead),
            detected_at_s=t0 - self._start,
            failed_attempt_s=failed.elapsed_s,
            regroup_s=t1 - t0,
            rebuild_s=t2 - t1,
            redo_s=attempt.elapsed_s,
            rebuilt_tokens=rebuilt,
        )
        self.events.append(event)
        return attempt

    def _regroup(self, dead: list[int], step_id: int) -> None:
        """Steps (1)-(3): every live rank leaves the old epoch's group, replacements start, all join."""
        if 0 in dead:
            raise WorkerFailure("rank 0 cannot fail and recover itself")
        if self.layout.tp > 1 and any(self.layout.role(r) == COMPUTE for r in dead):
            raise WorkerFailure(
                f"compute ranks {dead} of a tensor-parallel replica died; they cannot be replaced"
            )
        if self.respawn is None:
            raise WorkerFailure(f"ranks {dead} failed; replacing workers needs the spawning launcher")
        self.epoch += 1
        live = [r for r in range(1, self.layout.world_size) if r not in dead]
        links = self.fabric.links(self.clock)
        with self.clock.section("network"):
            msg = StepPlan(op=Op.REGROUP, epoch=self.epoch, targets=tuple(dead)).encode()
            for rank in live:
                links.send(rank, "ctrl", [msg])
            for rank in live:  # each live rank has consumed everything of the old epoch
                if links.recv(rank, "ack") is None:
                    raise WorkerFailure(f"rank {rank} failed during the recovery of ranks {dead}")
            links.flush()
        for rank in dead:
            self.fabric.kill(rank)  # a rank declared dead after a timeout may still run
        self.respawn(dead, self.epoch)
        self.fabric.regroup(self.epoch)
        bind_tp_group(self.model, self.fabric.tp_group())
        self.clock.mark_step(step_id, "regroup")

    def _rebuild(
        self, workers: list[int], step_id: int, history: dict[int, list[int]], reservations: dict[int, int]
    ) -> int:
        """Step (4): replica 0 recomputes the KV of every running request (prompt + generated tokens)
        and ships it to the attention `workers`; returns the number of tokens rebuilt."""
        seqs = [s for s, h in history.items() if h]
        plan = StepPlan(
            op=Op.REBUILD,
            step_id=step_id,
            seq_ids=tuple(seqs),
            query_lens=tuple(len(history[s]) for s in seqs),
            positions=(0,) * len(seqs),
            reserves=tuple(sorted(reservations.items())),
            targets=tuple(workers),
            tokens=tuple(t for s in seqs for t in history[s]),
        )
        attempt = self.run(plan)
        if attempt.dead or attempt.poisoned:
            raise WorkerFailure(
                f"ranks {sorted(attempt.dead)} failed while rebuilding attention workers {workers}"
            )
        self.clock.mark_step(step_id, "rebuild")
        return plan.num_tokens
