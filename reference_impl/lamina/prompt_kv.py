"""An attention worker's intake of prompt KV from prefill workers, accepted in the gaps between steps.

With prefill workers, rank 0 tells every attention worker about each prefill job it dispatches
(Op.PREFILL: the job's sequences, prompt lengths and prefill worker). The attention worker then
reserves the job's slots at once (`PagedKVCache.prepare`) and posts one receive per layer for that
worker's "prompt_kv" messages; the transport takes them off the wire in the background as the prefill
worker produces them. Whenever the attention worker is between two pieces of its own work (waiting
for rank 0's next plan, or starting a plan), it writes every layer that has arrived into its paged
cache (`accept`), so a decode step is never interrupted by a prompt (arXiv 2405.01814 v2 §5: KV moves
to the attention pool layer by layer, in the gaps between decode iterations).

Before a decode step that includes a job's sequence, or a free of one, the worker completes that job
(`complete`): rank 0 only decodes a request once its prefill worker reported the logits, which it
does after every layer was delivered, so that wait is for the cache writes only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from reference_impl.kv_cache import BatchMetadata, PagedKVCache
from reference_impl.lamina.clock import WorkerClock
from reference_impl.lamina.links import Links


@dataclass
class _Job:
    """One prefill job's KV on its way into this worker's cache: one pending receive per layer."""

    job_id: int
    seq_ids: frozenset
    meta: BatchMetadata
    pending: list  # per layer: links._PendingRecv of the "prompt_kv" message, in layer order
    next_layer: int = 0
    lost: bool = False  # the prefill worker died before sending every layer


class PromptKV:
    """The prefill jobs whose KV is still arriving at one attention worker."""

    def __init__(self, cache: PagedKVCache, num_layers: int) -> None:
        self.cache = cache
        self.num_layers = num_layers
        self.clock: WorkerClock | None = None  # the worker's clock (from its links): writes are "attention"
        self.jobs: list[_Job] = []  # in dispatch order
        self.accepted_layers = 0  # layer messages written into the cache (a job's layer counts once)

    def expect(self, job_id: int, seq_ids: tuple, prompt_lens: tuple, src: int, links: Links) -> None:
        """Reserves the slots of a job's prompts and posts the receives of its layers from `src`."""
        self.clock = links.clock
        meta = self.cache.prepare(list(seq_ids), list(prompt_lens))
        pending = [links.irecv(src, "prompt_kv") for _ in range(self.num_layers)]
        self.jobs.append(_Job(job_id, frozenset(seq_ids), meta, pending))

    def accept(self) -> bool:
        """Writes every layer that has arrived (without waiting); True while some job is incomplete."""
        for job in self.jobs:
            while not job.lost and job.next_layer < self.num_layers and job.pending[job.next_layer].done():
                self._write_next(job)
        self.jobs = [j for j in self.jobs if j.next_layer < self.num_layers and not j.lost]
        return bool(self.jobs)

    def complete(self, seq_ids: Iterable) -> bool:
        """Waits for and writes every layer of the jobs holding any of `seq_ids`; False if one was lost."""
        wanted = set(seq_ids)
        ok = True
        for job in self.jobs:
            if job.seq_ids & wanted:
                while job.next_layer < self.num_layers and not job.lost:
                    self._write_next(job)
                ok &= not job.lost
        self.jobs = [j for j in self.jobs if j.next_layer < self.num_layers and not j.lost]
        return ok

    def complete_all(self) -> None:
        """Waits for every job (before a regroup: nothing of the old epoch may stay in flight)."""
        self.complete(s for job in self.jobs for s in job.seq_ids)

    def _write_next(self, job: _Job) -> None:
        got = job.pending[job.next_layer].wait()
        if got is None:  # the prefill worker died; rank 0 never decodes this job's requests
            job.lost = True
            return
        k, v = got  # (T, Hkv_worker, D) each: this worker's whole head range
        with torch.inference_mode(), self.clock.section("attention"):
            self.cache.write(job.next_layer, job.meta.slot_mapping, k, v)
        job.next_layer += 1
        self.accepted_layers += 1
