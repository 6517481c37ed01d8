"""Rank 0's engine when prefill workers prefill: decode steps go on while prompts are prefilled elsewhere.

`DisaggregatedEngine` keeps the baseline Engine's policy (first come first served; a request is admitted
once the attention pool can reserve its prompt plus max_new_tokens; `max_batch_size` caps the requests
admitted and not finished) and changes only where a prompt runs. One iteration:

1. one decode step of every running request (nothing if none runs);
2. retirement of finished requests;
3. the prefill jobs that finished (their logits are in, hence their KV is in the attention pool): each
   request's first token is sampled from its logits, and it joins the running batch, so it is decoded
   from the next iteration on; when nothing runs, the iteration waits for the oldest job instead;
4. admission of arrived requests, whose prompts go to the prefill workers (`dispatch_prefill`), and
   the iteration ends without waiting for them.

So a prompt is prefilled while the compute workers decode the others, and its first token (TTFT) does
not wait for a decode batch, nor a decode step for a prompt (the Lamina paper's prefill on its own
devices, arXiv 2405.01814 v2). Greedy tokens equal the baseline's: only the iteration in which a request
joins changes. IterationRecord: prefill_seqs and prefill_tokens count the requests dispatched in the
iteration; prefill_s is rank 0's time on steps 3-4 (waiting for a job included).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from reference_impl.engine import EngineRun, IterationRecord, Request, sample
from reference_impl.lamina.executor import LaminaEngine
from reference_impl.scheduling import RequestState, ReserveAll, WaitingQueue


class DisaggregatedEngine(LaminaEngine):
    """LaminaEngine whose prefills run on prefill workers while decode steps go on (module docstring)."""

    def run(self, requests: Sequence[Request]) -> EngineRun:
        executor = self.executor
        policy = ReserveAll(executor, self.max_batch_size)  # prefill workers admit with reserve-all only
        self._validate(requests, policy.check)
        generator = torch.Generator().manual_seed(self.sampling.seed)
        queue = WaitingQueue(requests)
        running: list[RequestState] = []
        prefilling: dict[int, RequestState] = {}  # request id -> dispatched, first token not yet sampled
        done: dict[int, RequestState] = {}
        iterations: list[IterationRecord] = []
        start = time.perf_counter()
        step = 0
        while queue or running or prefilling:
            queue.arrive(step)
            t0 = time.perf_counter()
            decode_seqs = len(running)
            if running:
                self._advance(running, [[seq.output_ids[-1]] for seq in running], generator, start)
            t1 = time.perf_counter()
            self._retire(running, done)
            for seq_ids, logits in executor.finished_prefills(wait=not running):
                joined = [prefilling.pop(seq_id) for seq_id in seq_ids]
                self._first_tokens(joined, logits, generator, start)
                running.extend(joined)
            self._retire(running, done)  # finished on the first token (max_new_tokens 1, or a stop id)
            admitted = policy.admit(queue, running + list(prefilling.values()), step, decode_seqs)
            if admitted:
                executor.dispatch_prefill(
                    [s.request.request_id for s in admitted], [list(s.request.prompt_ids) for s in admitted]
                )
                prefilling.update((s.request.request_id, s) for s in admitted)
            t2 = time.perf_counter()
            iterations.append(
                IterationRecord(
                    step=step,
                    decode_seqs=decode_seqs,
                    prefill_seqs=len(admitted),
                    prefill_tokens=sum(len(s.request.prompt_ids) for s in admitted),
                    waiting=len(queue.waiting),
                    free_kv_tokens=executor.kv_free_tokens(),
                    decode_s=t1 - t0,
                    prefill_s=t2 - t1,
                    wall_s=t2 - t0,
                )
            )
            step += 1
        wall_s = time.perf_counter() - start
        completions = [self._completion(done[r.request_id]) for r in requests]
        return EngineRun(completions=completions, iterations=iterations, wall_s=wall_s)

    def _first_tokens(self, seqs: list[RequestState], logits: torch.Tensor, generator, start: float) -> None:
        """Samples each request's first token from its prefill logits (B, V), as Engine._advance does."""
        next_ids = self.executor.agree(sample(logits, self.sampling, generator)).tolist()
        now = time.perf_counter() - start
        for seq, tok in zip(seqs, next_ids, strict=True):
            seq.output_ids.append(tok)
            seq.token_times_s.append(now)
            if tok in self.sampling.stop_token_ids:
                seq.finish_reason = "stop"
            elif len(seq.output_ids) >= seq.request.max_new_tokens:
                seq.finish_reason = "length"
