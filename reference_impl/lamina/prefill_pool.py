"""Rank 0's view of the prefill workers: which worker prefills which prompts, and their results.

Placement: the requests admitted in one iteration go one by one, in admission order, to the prefill
worker with the fewest prompt tokens outstanding (dispatched, result not yet taken; ties: the lowest
index), and the requests a worker gets in one iteration form one job (one Op.PREFILL plan). A job's
result is the logits of each prompt's last token ("prefill_out"); it comes once every attention worker
has received the job's KV (prefill_worker.py), and rank 0 polls for it between decode steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reference_impl.errors import WorkerFailure
from reference_impl.lamina.layout import Layout
from reference_impl.lamina.plan import StepPlan


@dataclass
class PrefillJob:
    plan: StepPlan  # the Op.PREFILL plan sent (its tokens are the prompts)
    worker: int  # prefill worker index
    result: object  # links._PendingRecv of the worker's "prefill_out" message

    def prompts(self) -> dict[int, tuple[int, ...]]:
        """Sequence id -> its prompt token ids."""
        out, start = {}, 0
        for seq_id, n in zip(self.plan.seq_ids, self.plan.query_lens, strict=True):
            out[seq_id] = self.plan.tokens[start : start + n]
            start += n
        return out


class PrefillPool:
    """Jobs in flight on the prefill workers, in dispatch order, and finished ones not yet taken."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.jobs: list[PrefillJob] = []
        self.ready: list[tuple[list[int], torch.Tensor]] = []  # finished by drain(), not yet taken
        self.prompts: dict[int, tuple[int, ...]] = {}  # seq id -> prompt, until its job is taken

    def outstanding_tokens(self) -> list[int]:
        """Prompt tokens dispatched to each prefill worker whose result has not come back."""
        load = [0] * self.layout.prefill_workers
        for job in self.jobs:
            load[job.worker] += job.plan.num_tokens
        return load

    def assign(self, prompt_lens: list[int]) -> list[tuple[int, list[int]]]:
        """(worker, indices into prompt_lens) per worker that gets a job, by worker index."""
        load = self.outstanding_tokens()
        groups: dict[int, list[int]] = {}
        for i, n in enumerate(prompt_lens):
            worker = min(range(len(load)), key=lambda w: (load[w], w))
            load[worker] += n
            groups.setdefault(worker, []).append(i)
        return sorted(groups.items())

    def add(self, plan: StepPlan, worker: int, result) -> None:
        job = PrefillJob(plan, worker, result)
        self.jobs.append(job)
        self.prompts.update(job.prompts())

    def take_done(self, wait: bool) -> list[tuple[list[int], torch.Tensor]]:
        """(sequence ids, logits (B, V)) of every finished job, oldest first; with `wait`, waits for the
        oldest job in flight when none has finished."""
        out, self.ready = self.ready, []
        for job in list(self.jobs):
            if job.result.done() or (wait and not out and job is self.jobs[0]):
                out.append(self._finish(job))
        return out

    def drain(self) -> list[tuple[list[int], torch.Tensor]]:
        """Waits for every job in flight; they become ready (taken by the next take_done). Returns them."""
        finished = [self._finish(job) for job in list(self.jobs)]
        self.ready.extend(finished)
        return finished

    def _finish(self, job: PrefillJob) -> tuple[list[int], torch.Tensor]:
        got = job.result.wait()
        if got is None:
            raise WorkerFailure(
                f"prefill worker {job.worker} (rank {self.layout.prefill_rank(job.worker)}) lost prefill job "
                f"{job.plan.step_id}; a prefill worker is not replaced"
            )
        self.jobs.remove(job)
        return list(job.plan.seq_ids), got[0]
