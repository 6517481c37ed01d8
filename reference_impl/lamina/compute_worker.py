"""The compute worker: holds the weights (one TP shard of one replica) and runs every dense operator.

Per layer of a decode step it sends q, k, v of each head range to the attention worker that owns it
("qkv"; with the attention split, "q" then "new_kv") and gets the attention output back ("attn_out").
New requests are prefilled here (causal attention over the prompt, locally) and the prompt's KV is
shipped layer by layer to the owning attention workers ("prompt_kv").

Pipelining: a decode step splits the batch into n micro-batches and runs them through the converter's
slices in the order of `pipeline.schedule` (n = 1: no overlap; n = 2: ping-pong on one replica;
n >= 3: rotational, slice k of micro-batch j on replica ((j + k) mod (n - 1)) + 1, the live values
crossing between replicas as "live" messages). Every step fills and drains the pipeline (an iteration
barrier): the next step's plan depends on this step's sampled tokens.

Failures: a missing attention output is replaced by zeros and the micro-batch marked poisoned; live
values that cannot be replaced (those of a dead compute replica) travel on as an empty message. The
step still runs to its end, so no survivor blocks; rank 0 then has it redone (recovery.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from reference_impl.attention import prefill_attention_ref
from reference_impl.lamina.layout import HeadRouting, Layout, Route, check_schedule_order
from reference_impl.lamina.links import Links
from reference_impl.lamina.plan import Op, Phase, StepPlan
from reference_impl.pipeline import schedule


class PromptAttention:
    """Attention context of a prefill on the compute side.

    Per layer: the prompt's k/v of each routed head range go to their attention worker (sent first, so
    the transfer overlaps this layer's attention and the next layer), then causal attention over each
    prompt runs locally. Prompts start at position 0 (nothing of them is cached yet).
    """

    def __init__(self, query_lens: Sequence[int], routes: list[Route], dst_ranks: list[int], links: Links):
        self.query_lens = list(query_lens)
        self.routes = routes
        self.dst_ranks = dst_ranks
        self.links = links

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int) -> torch.Tensor:
        for route, dst in zip(self.routes, self.dst_ranks, strict=True):
            self.links.send(dst, "prompt_kv", [k[:, route.compute_kv], v[:, route.compute_kv]])
        with self.links.clock.section("attention"):
            scale = q.shape[-1] ** -0.5
            outs, start = [], 0
            for n in self.query_lens:
                sl = slice(start, start + n)
                outs.append(prefill_attention_ref(q[sl], k[sl], v[sl], scale)[0])  # (n, Hq_local, D)
                start += n
            return torch.cat(outs)  # (T, Hq_local, D)


@dataclass
class StepOutput:
    """What a compute worker's step produced for rank 0: last-token hidden states per micro-batch."""

    hidden: dict[int, torch.Tensor | None] = field(default_factory=dict)  # micro-batch -> (b, d) or None
    poisoned: bool = False  # an attention output was missing and replaced by zeros


class ComputeWorker:
    """Holds the weights (one TP shard of one replica) and runs prefills and decode slices."""

    def __init__(
        self,
        rank: int,
        layout: Layout,
        routing: HeadRouting,
        model,
        split_model,
        split_attention: bool = False,
    ) -> None:
        self.rank = rank
        self.split_attention = split_attention  # send q and the new token's k/v as two messages
        self.layout = layout
        self.replica = layout.replica_of(rank)
        self.tp_rank = layout.tp_rank_of(rank)
        self.model = model
        self.split = split_model
        self.routes = routing.from_tp_rank(self.tp_rank)
        self.num_layers = model.config.num_layers
        self.head_dim = model.config.head_dim
        steps = schedule(self.num_layers, layout.pipeline_batches, layout.replicas)
        check_schedule_order(steps)
        self.tasks = steps[self.replica + 1]  # this replica's dense slices, in order
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype

    @torch.inference_mode()
    def execute(self, plan: StepPlan, links: Links) -> StepOutput:
        if plan.op == Op.REBUILD:
            return self._prefill(plan, links, workers=set(plan.targets))
        if plan.phase == Phase.PREFILL:
            return self._prefill(plan, links, workers=set(range(self.layout.attention_workers)))
        return self._decode(plan, links)

    def _prefill(self, plan: StepPlan, links: Links, workers: set[int]) -> StepOutput:
        """Replica 0 prefills (and ships the KV to `workers`); other replicas have nothing to do."""
        if self.replica != 0 or not plan.seq_ids:
            return StepOutput()
        routes = [r for r in self.routes if r.worker in workers]
        dsts = [self.layout.attention_rank(r.worker) for r in routes]
        ids = torch.tensor(plan.tokens, dtype=torch.long, device=self.device)  # (T,)
        positions = torch.cat(
            [torch.arange(p, p + n) for p, n in zip(plan.positions, plan.query_lens, strict=True)]
        ).to(self.device)  # (T,)
        ctx = PromptAttention(plan.query_lens, routes, dsts, links)
        with links.clock.section("dense"):
            hidden = self.model(ids, positions, ctx)  # (T, d)
        # (B,) index of each sequence's last token
        last = torch.tensor(plan.query_lens, device=self.device).cumsum(0) - 1
        return StepOutput(hidden={0: hidden[last]})

    def _decode(self, plan: StepPlan, links: Links) -> StepOutput:
        out = StepOutput()
        ids = torch.tensor(plan.tokens, dtype=torch.long, device=self.device)  # (B,) one token per sequence
        positions = torch.tensor(plan.positions, dtype=torch.long, device=self.device)  # (B,)
        bounds = plan.micro_batch_bounds()
        kept: dict[int, list[torch.Tensor] | None] = {}  # micro-batch -> live values staying on this replica
        for task in self.tasks:
            j, k = task.batch, task.index
            start, stop = bounds[j]
            if start == stop:
                continue  # an empty micro-batch: nobody sends or expects anything for it
            if k == 0:
                with links.clock.section("dense"):
                    result = self.split.slices[0](ids[start:stop], positions[start:stop])
            else:
                live = self._take_live(j, k, kept, links)
                attn = self._gather_attention(stop - start, links, out)  # layer k - 1's output
                result = None
                if live is not None:
                    with links.clock.section("dense"):
                        result = self.split.slices[k](*live, attn)
            self._emit(j, k, result, kept, links, out)
        return out

    def _take_live(self, j: int, k: int, kept: dict, links: Links) -> list[torch.Tensor] | None:
        """Live values entering slice k of micro-batch j: kept here, or sent by the replica that ran k-1."""
        prev = self.layout.slice_replica(j, k - 1)
        if prev == self.replica:
            return kept.pop(j)
        live = links.recv(self.layout.compute_rank(prev, self.tp_rank), "live")
        if live is None and self.layout.tp > 1:
            # the TP peers of this replica got theirs and will enter the slice's all-reduce: no way to
            # keep them in step without the inputs
            raise RuntimeError(f"rank {self.rank}: live values from compute replica {prev} are missing")
        return live

    def _gather_attention(self, batch: int, links: Links, out: StepOutput) -> torch.Tensor:
        """The next attention output (b, Hq_local, D) of this TP rank's heads, assembled from its routes.

        Each worker sends its outputs in schedule order, so the next one from each is the one wanted.
        """
        parts = []
        for route in self.routes:
            got = links.recv(self.layout.attention_rank(route.worker), "attn_out")
            if got is None:  # the worker died: zeros keep the TP peers in step; the step will be redone
                out.poisoned = True
                shape = (batch, route.num_q_heads, self.head_dim)
                got = [torch.zeros(shape, dtype=self.dtype, device=self.device)]
            parts.append(got[0])
        return torch.cat(parts, dim=1)

    def _emit(self, j: int, k: int, result, kept: dict, links: Links, out: StepOutput) -> None:
        """Send what slice k of micro-batch j produced: q/k/v and live values, or the final hidden."""
        if k == self.num_layers:
            if self.rank == 0:
                out.hidden[j] = result
            elif self.tp_rank == 0:
                links.send(0, "hidden", [] if result is None else [result])
            return
        if result is None:
            live = None
            for route in self.routes:
                for kind in self._qkv_kinds():
                    links.send(self.layout.attention_rank(route.worker), kind, [])
        else:
            *live, q, key, value = result
            for route in self.routes:
                dst = self.layout.attention_rank(route.worker)
                qs, kvs = q[:, route.compute_q], (key[:, route.compute_kv], value[:, route.compute_kv])
                if self.split_attention:
                    links.send(dst, "q", [qs])
                    links.send(dst, "new_kv", list(kvs))
                else:
                    links.send(dst, "qkv", [qs, *kvs])
        nxt = self.layout.slice_replica(j, k + 1)
        if nxt == self.replica:
            kept[j] = live
        else:
            links.send(self.layout.compute_rank(nxt, self.tp_rank), "live", [] if live is None else live)

    def _qkv_kinds(self) -> tuple[str, ...]:
        return ("q", "new_kv") if self.split_attention else ("qkv",)
