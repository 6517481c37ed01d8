"""The prefill worker: holds the whole dense model and prefills prompts while the compute workers decode.

Rank 0 sends it prefill jobs (Op.PREFILL plans with the prompts' token ids). Per job it runs the prompts
through every layer with causal attention over each prompt computed here, sends each layer's k/v of
each attention worker's head range to that worker as soon as the layer has produced them ("prompt_kv",
the same message as a compute worker's prefill), waits until every such message is delivered, and only
then sends rank 0 the logits of each prompt's last token ("prefill_out"). So when rank 0 has the
logits, every attention worker has received the job's KV, and the first decode step that includes
the job's requests never waits on the prefill (arXiv 2405.01814 v2, prefill on its own devices; the
KV moves to the attention pool layer by layer).

A prefill worker holds no KV cache and no tensor-parallel shard: its model is the checkpoint whole.
Failures: a send to a dead attention worker is dropped (Links marks it dead), so the job still ends
and rank 0 gets the logits; rank 0 finds that worker dead in its next decode step.
"""

from __future__ import annotations

import torch

from reference_impl.lamina.compute_worker import PromptAttention
from reference_impl.lamina.layout import HeadRouting, Layout
from reference_impl.lamina.links import Links
from reference_impl.lamina.plan import StepPlan


class PrefillWorker:
    """Runs prefill jobs: the prompts' forward pass, their KV to the attention workers, logits to rank 0."""

    def __init__(self, rank: int, layout: Layout, routing: HeadRouting, model) -> None:
        if routing.tp_size != 1:
            raise ValueError(
                f"a prefill worker holds the whole model: routing for TP 1, got {routing.tp_size}"
            )
        self.rank = rank
        self.layout = layout
        self.worker = layout.prefill_of(rank)
        self.model = model
        self.routes = routing.from_tp_rank(0)  # one route per attention worker: its whole head range
        self.device = next(model.parameters()).device

    @torch.inference_mode()
    def execute(self, plan: StepPlan, links: Links) -> None:
        ids = torch.tensor(plan.tokens, dtype=torch.long, device=self.device)  # (T,)
        positions = torch.cat(
            [torch.arange(p, p + n) for p, n in zip(plan.positions, plan.query_lens, strict=True)]
        ).to(self.device)  # (T,)
        dsts = [self.layout.attention_rank(r.worker) for r in self.routes]
        ctx = PromptAttention(plan.query_lens, self.routes, dsts, links)
        with links.clock.section("dense"):
            hidden = self.model(ids, positions, ctx)  # (T, d)
            last = torch.tensor(plan.query_lens, device=self.device).cumsum(0) - 1  # (B,)
            logits = self.model.logits(hidden[last])  # (B, V) fp32
        links.flush()  # every attention worker holds the job's KV before rank 0 hears of it
        links.send(0, "prefill_out", [logits])
