"""The expert side of AFD: an expert worker holds experts [lo, hi) of every MoE layer (expert parallel).

Per step it follows the attention side's order: for each MoE layer, for each micro-batch, it takes the
dispatch of every attention worker, runs each of its experts once on all the rows routed to it (the
rows of every attention worker together, as one batch) and sends each attention worker its outputs
(wire.py). Nothing else of the model lives here; the routing weights stay on the attention side.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from reference_impl.afd.wire import Dispatch, run_experts
from reference_impl.model import DecoderModel
from reference_impl.moe import MoEBlock


class ExpertWorker:
    """Experts [lo, hi) of every MoE layer; answers each dispatch with the experts' outputs."""

    def __init__(
        self, model: DecoderModel, expert_range: tuple[int, int], transport, attention_ranks: Sequence[int]
    ) -> None:
        lo, hi = expert_range
        self.expert_range = expert_range
        # only these experts are kept: the rest of the loaded model is dropped with `model`
        self.experts = {
            layer: [block.mlp.experts[e] for e in range(lo, hi)]
            for layer, block in enumerate(model.layers)
            if isinstance(block.mlp, MoEBlock)
        }
        self.transport = transport
        self.attention_ranks = list(attention_ranks)

    @torch.inference_mode()
    def execute(self, plan) -> None:
        """One step (afd.plan.StepPlan): every MoE layer's dispatches, micro-batch by micro-batch."""
        for experts in self.experts.values():
            for _ in range(plan.micro_batches):
                dispatches = [
                    Dispatch.from_message(
                        self.transport.recv(rank, "dispatch"), self.transport.recv(rank, "routing")
                    )
                    for rank in self.attention_ranks
                ]
                outputs = run_experts(experts, dispatches)
                for rank, out in zip(self.attention_ranks, outputs, strict=True):
                    self.transport.send(rank, "combine", [out])
