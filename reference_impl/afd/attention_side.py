"""The attention side of AFD: everything but the routed experts, for the requests this worker serves.

An attention worker holds the whole model except the routed experts: embeddings, norms, attention
and its own paged KV cache, the routers, the shared experts (DeepSeek-V3) and the dense layers (a
MoE model's dense first layers, Qwen3-MoE's mlp_only_layers). Requests are split data-parallel: each
lives on one attention worker, whose cache holds its KV (rank 0 places it, executor.py).

Per MoE layer the worker routes its tokens, sends each expert worker the tokens with a chosen expert
there (dispatch, M2N; wire.py), computes the shared expert meanwhile, then receives the expert
outputs (combine, N2M) and sums them with the routing weights exactly as MoEBlock does.

Ping-pong (pipeline_batches 2, MegaScale-Infer arXiv 2504.02263 Sec. 4): the worker's sequences are
split in two micro-batches, each run as a coroutine (`_layers` yields at every dispatch); while one
micro-batch's tokens are at the experts the other runs its attention. Every micro-batch, even one
without sequences, dispatches once per MoE layer to every expert worker, so the expert side always
knows how many messages to take (layer by layer, micro-batch by micro-batch, from every worker).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from reference_impl.afd.wire import Dispatch, outputs_by_expert, split_for_workers
from reference_impl.attention import PagedAttention
from reference_impl.kv_cache import PagedKVCache
from reference_impl.layers import rope_cos_sin
from reference_impl.model import DecoderModel
from reference_impl.moe import MoEBlock, weighted_sum

# A micro-batch's run: yields a PendingCombine at each MoE layer, gets the outputs by expert back, and
# returns the last-token hidden states of its sequences.
Run = Generator["PendingCombine", dict[int, torch.Tensor], torch.Tensor]


def drop_routed_experts(model: DecoderModel) -> DecoderModel:
    """The attention side's model: every MoE layer keeps its router and shared experts, not its experts."""
    for block in model.layers:
        if isinstance(block.mlp, MoEBlock):
            block.mlp.experts = nn.ModuleList()
    return model


class PendingCombine:
    """The expert outputs of one dispatch, on their way back from the expert workers."""

    def __init__(self, transport, expert_ranks: Sequence[int], dispatches, ranges) -> None:
        self.transport, self.expert_ranks, self.dispatches, self.ranges = (
            transport,
            expert_ranks,
            dispatches,
            ranges,
        )

    def wait(self) -> dict[int, torch.Tensor]:
        """Expert id -> its outputs (n_e, d) for the rows routed to it, in token order."""
        out = {}
        for rank, dispatch, (lo, _) in zip(self.expert_ranks, self.dispatches, self.ranges, strict=True):
            (combined,) = self.transport.recv(rank, "combine")
            out.update(outputs_by_expert(combined, dispatch, lo))
        return out


def ping_pong(runs: Sequence[Run]) -> list[torch.Tensor]:
    """Runs the micro-batches' coroutines interleaved: each runs until it has dispatched a MoE layer, then
    the next; a micro-batch resumes once its combine is in. Returns each run's result, in order."""
    results: list[torch.Tensor | None] = [None] * len(runs)
    pending: dict[int, PendingCombine] = {}

    def advance(j: int, value: dict[int, torch.Tensor] | None) -> None:
        try:
            pending[j] = runs[j].send(value)
        except StopIteration as stop:
            results[j] = stop.value

    for j in range(len(runs)):
        advance(j, None)
    while pending:
        for j in sorted(pending):
            advance(j, pending.pop(j).wait())
    return results


class AttentionWorker:
    """The model without routed experts, the KV cache of this worker's requests, and the per-layer exchange."""

    def __init__(
        self,
        model: DecoderModel,
        num_blocks: int,
        block_size: int,
        backend: str,
        transport,
        expert_ranks: Sequence[int],
        ranges: Sequence[tuple[int, int]],
    ) -> None:
        cfg = model.config
        param = next(model.parameters())
        self.model = model
        self.cache = PagedKVCache(
            cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, num_blocks, block_size, param.dtype, param.device
        )
        self.backend = backend
        self.transport = transport
        self.expert_ranks = list(expert_ranks)
        self.ranges = list(ranges)
        self.num_experts = cfg.moe.num_experts
        self.moe_layers = [i for i, b in enumerate(model.layers) if isinstance(b.mlp, MoEBlock)]

    @torch.inference_mode()
    def execute(self, plan) -> torch.Tensor:
        """One step (afd.plan.StepPlan) over this worker's sequences: the last-token hidden states (b, d)."""
        for seq_id in plan.frees:
            self.cache.free(seq_id)
        for seq_id, num_tokens in plan.reserves:
            self.cache.reserve(seq_id, num_tokens)
        starts = [0, *torch.tensor(plan.query_lens, dtype=torch.long).cumsum(0).tolist()]  # token offsets
        runs = []
        for a, b in plan.micro_batch_bounds():
            if a == b:
                runs.append(self._idle())
                continue
            ids = torch.tensor(
                plan.tokens[starts[a] : starts[b]], dtype=torch.long, device=self.cache.k.device
            )
            runs.append(self._run(plan.seq_ids[a:b], plan.query_lens[a:b], ids))
        return torch.cat(ping_pong(runs))  # (b, d)

    def _run(self, seq_ids: Sequence[int], query_lens: Sequence[int], ids: torch.Tensor) -> Run:
        """One micro-batch through the model, positions and KV slots as the homogeneous executor takes them."""
        meta = self.cache.prepare(list(seq_ids), list(query_lens))
        spans = zip(query_lens, meta.context_lens, strict=True)
        positions = torch.cat([torch.arange(c - q, c, dtype=torch.long) for q, c in spans]).to(ids.device)
        ctx = PagedAttention(self.cache, meta, backend=self.backend)
        hidden = yield from self._layers(ids, positions, ctx)  # (T, d)
        last = torch.tensor(list(query_lens), device=ids.device).cumsum(0) - 1  # (b,) each sequence's last
        return hidden[last]

    def _layers(self, ids: torch.Tensor, positions: torch.Tensor, ctx) -> Run:
        """DecoderModel.forward (RoPE models), with each MoE layer's routed experts on the expert workers."""
        m = self.model
        x = F.embedding(ids, m.embed)  # (T, d)
        rope = rope_cos_sin(positions, m.inv_freq, x.dtype)  # cos, sin: (T, D) each
        for layer, block in enumerate(m.layers):
            h = x + block.attn(block.attn_norm(x), rope, ctx)  # (T, d)
            if layer in self.moe_layers:
                x = h + (yield from self._moe(block.mlp, block.mlp_norm(h)))
            else:
                x = h + block.mlp(block.mlp_norm(h))
        return m.norm(x)

    def _moe(self, mlp: MoEBlock, x: torch.Tensor) -> Run:
        """MoEBlock.forward with the routed experts remote: route, dispatch, (shared expert), combine."""
        weights, experts = mlp.router(x)  # (T, k), (T, k)
        pending = self._dispatch(x, experts)
        shared = mlp.shared(x) if mlp.shared is not None else None  # while the experts work
        outputs = yield pending
        out = weighted_sum(x, weights, experts, self.num_experts, lambda e, token: outputs[e])
        return out if shared is None else out + shared

    def _idle(self) -> Run:
        """A micro-batch without sequences: an empty dispatch per MoE layer keeps the expert side in step."""
        d = self.model.config.hidden_size
        x = torch.zeros(0, d, dtype=self.cache.k.dtype, device=self.cache.k.device)
        experts = torch.zeros(0, self.model.config.moe.top_k, dtype=torch.long, device=x.device)
        for _ in self.moe_layers:
            yield self._dispatch(x, experts)
        return x

    def _dispatch(self, x: torch.Tensor, experts: torch.Tensor) -> PendingCombine:
        dispatches: list[Dispatch] = split_for_workers(x, experts, self.ranges)
        for rank, dispatch in zip(self.expert_ranks, dispatches, strict=True):
            rows, routing = dispatch.to_message()
            self.transport.send(rank, "dispatch", rows)
            self.transport.send(rank, "routing", routing)
        return PendingCombine(self.transport, self.expert_ranks, dispatches, self.ranges)
