"""The attention worker: owns the KV cache of a contiguous range of KV heads and runs attention for them.

A prefill's KV arrives layer by layer ("prompt_kv") and is written into the cache: from compute
replica 0 within a prefill step, or, with prefill workers, from a prefill worker while decode steps go
on, accepted in the gaps between them (prompt_kv.py). Per layer of a
decode step the worker receives q, k, v of its heads from the compute ranks that hold them, writes
the new token's k/v, attends over the cache and sends the output back ("attn_out"), micro-batch by
micro-batch in the order of `pipeline.schedule`.

Attention split (option): q and the new token's k/v travel as two messages ("q", "new_kv"); the
worker starts on the cached tokens as soon as q is in, then writes the new k/v and merges the new
token's part with the log-sum-exp merge (exact: the two key sets are disjoint).

Failures: when an input is missing (its sender died) the worker sends an empty message in place of
the output, so the compute side does not block; the step is redone after the recovery.
"""

from __future__ import annotations

import torch

from reference_impl.attention import PagedAttention, decode_attention, merge_attention
from reference_impl.kv_cache import BatchMetadata, PagedKVCache
from reference_impl.lamina.layout import HeadRouting, Layout, check_schedule_order
from reference_impl.lamina.links import Links
from reference_impl.lamina.plan import Op, Phase, StepPlan
from reference_impl.lamina.prompt_kv import PromptKV
from reference_impl.pipeline import ATTENTION_POOL, schedule


def new_token_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of each query (B, Hq, D) over its own new key/value (B, Hkv, D) alone.

    Softmax over one key is 1, so the output is v (per query head) and the log-sum-exp is the score.
    Returns out (B, Hq, D) fp32 and lse (B, Hq) fp32, ready for merge_attention.
    """
    group = q.shape[1] // k.shape[1]
    k_rep = k.float().repeat_interleave(group, dim=1)  # (B, Hq, D): query head h reads KV head h // G
    lse = (q.float() * k_rep).sum(-1) * scale  # (B, Hq)
    return v.float().repeat_interleave(group, dim=1), lse


class AttentionWorker:
    """Owns the KV cache of a contiguous range of KV heads and runs attention for those heads.

    Its cache has the same number of blocks as every other attention worker's, so the compute side's
    admission by blocks is the pool's capacity.
    """

    def __init__(
        self,
        rank: int,
        layout: Layout,
        routing: HeadRouting,
        num_layers: int,
        head_dim: int,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device | str,
        backend: str = "auto",
        split_attention: bool = False,
    ) -> None:
        self.rank = rank
        self.layout = layout
        self.worker = layout.worker_of(rank)
        self.routes = routing.to_worker(self.worker)
        start, stop = routing.worker_range(self.worker)
        self.cache = PagedKVCache(num_layers, stop - start, head_dim, num_blocks, block_size, dtype, device)
        self.num_layers = num_layers
        self.backend = backend
        self.split_attention = split_attention
        self.tasks = schedule(num_layers, layout.pipeline_batches, layout.replicas)[ATTENTION_POOL]
        check_schedule_order([self.tasks])
        self._step_id: int | None = None  # the last step whose reservations and slots were applied
        self._metas: list[BatchMetadata | None] = []
        self.prompts = PromptKV(self.cache, num_layers)  # prefill workers' jobs still arriving

    @torch.inference_mode()
    def execute(self, plan: StepPlan, links: Links) -> None:
        self.prompts.accept()
        if plan.op == Op.REBUILD:
            if self.worker in plan.targets:
                self._rebuild(plan, links)
            return
        if plan.op == Op.PREFILL:
            self._apply_reservations(plan)
            self.prompts.expect(plan.step_id, plan.seq_ids, plan.query_lens, plan.targets[0], links)
            return
        self.prompts.complete(plan.seq_ids)  # rank 0 decodes a request only once its KV was delivered
        metas = self._step_metadata(plan)
        if plan.phase == Phase.PREFILL:
            self._receive_prompt_kv(metas[0], links)
        else:
            self._decode(plan, metas, links)

    def _rebuild(self, plan: StepPlan, links: Links) -> None:
        """A fresh worker: every running sequence's reservation, then the KV of its tokens so far."""
        for seq_id, num_tokens in plan.reserves:
            self.cache.reserve(seq_id, num_tokens)
        if plan.seq_ids:
            self._receive_prompt_kv(self.cache.prepare(list(plan.seq_ids), list(plan.query_lens)), links)

    def _step_metadata(self, plan: StepPlan) -> list[BatchMetadata | None]:
        """Slots of this step, one metadata per micro-batch (one for a prefill).

        A redo reuses the metadata of the failed attempt when this worker saw it (its lengths advanced
        already; the redo rewrites the same slots); a replacement prepares afresh.
        """
        if plan.redo and self._step_id == plan.step_id:
            return self._metas
        if not plan.redo:
            self._apply_reservations(plan)
        bounds = [(0, len(plan.seq_ids))] if plan.phase == Phase.PREFILL else plan.micro_batch_bounds()
        self._metas = [
            self.cache.prepare(list(plan.seq_ids[a:b]), list(plan.query_lens[a:b])) if b > a else None
            for a, b in bounds
        ]
        self._step_id = plan.step_id
        return self._metas

    def _apply_reservations(self, plan: StepPlan) -> None:
        """The frees, then the reservations, made since rank 0's previous plan."""
        self.prompts.complete(plan.frees)  # a prompt still arriving keeps its slots until it is in
        for seq_id in plan.frees:
            self.cache.free(seq_id)
        for seq_id, num_tokens in plan.reserves:
            self.cache.reserve(seq_id, num_tokens)

    def _receive_prompt_kv(self, meta: BatchMetadata | None, links: Links) -> None:
        if meta is None:
            return
        srcs = [self.layout.compute_rank(0, r.tp_rank) for r in self.routes]
        for layer in range(self.num_layers):
            parts = [links.recv(src, "prompt_kv") for src in srcs]
            if any(p is None for p in parts):
                continue  # the step fails; the redo writes these slots
            with links.clock.section("attention"):
                k = torch.cat([p[0] for p in parts], dim=1)  # (T, Hkv_worker, D)
                v = torch.cat([p[1] for p in parts], dim=1)
                self.cache.write(layer, meta.slot_mapping, k, v)

    def _decode(self, plan: StepPlan, metas: list[BatchMetadata | None], links: Links) -> None:
        for task in self.tasks:
            j, layer = task.batch, task.index
            meta = metas[j]
            if meta is None:
                continue
            src = self.layout.slice_replica(j, layer)
            dst = self.layout.slice_replica(j, layer + 1)
            srcs = [self.layout.compute_rank(src, r.tp_rank) for r in self.routes]
            if self.split_attention:
                out = self._attend_split(meta, layer, srcs, links)
            else:
                out = self._attend(meta, layer, srcs, links)
            for route in self.routes:
                dst_rank = self.layout.compute_rank(dst, route.tp_rank)
                links.send(dst_rank, "attn_out", [] if out is None else [out[:, route.worker_q]])

    def _attend(self, meta: BatchMetadata, layer: int, srcs: list[int], links: Links) -> torch.Tensor | None:
        parts = [links.recv(src, "qkv") for src in srcs]
        if any(p is None for p in parts):
            return None
        with links.clock.section("attention"):
            q, k, v = (torch.cat([p[i] for p in parts], dim=1) for i in range(3))  # heads in route order
            attention = PagedAttention(self.cache, meta, backend=self.backend)  # writes k/v, then attends
            return attention.attend(q, k, v, layer)  # (b, Hq_w, D)

    def _attend_split(
        self, meta: BatchMetadata, layer: int, srcs: list[int], links: Links
    ) -> torch.Tensor | None:
        """Attention over the cached tokens as soon as q is here; the new token's k/v merged in after."""
        qs = [links.recv(src, "q") for src in srcs]
        # posted after q's receive (a transport serves one source's receives in order), so the k/v
        # message is taken off the wire while the cached tokens are read
        pending_kv = [links.irecv(src, "new_kv") for src in srcs]
        if any(p is None for p in qs):
            for pending in pending_kv:
                pending.wait()  # consume the matching message so the next step stays aligned
            return None
        q = torch.cat([p[0] for p in qs], dim=1)  # (b, Hq_w, D)
        scale = q.shape[-1] ** -0.5
        with links.clock.section("attention"):
            cached = meta.seq_lens - 1  # tokens before this step's (all >= 1: a prompt has >= 1 token)
            out_old, lse_old = decode_attention(
                q,
                self.cache.k[layer],
                self.cache.v[layer],
                meta.block_tables,
                cached,
                scale,
                backend=self.backend,
            )
        kvs = [pending.wait() for pending in pending_kv]
        if any(p is None for p in kvs):
            return None
        with links.clock.section("attention"):
            k = torch.cat([p[0] for p in kvs], dim=1)  # (b, Hkv_w, D)
            v = torch.cat([p[1] for p in kvs], dim=1)
            self.cache.write(layer, meta.slot_mapping, k, v)
            out_new, lse_new = new_token_attention(q, k, v, scale)
            out, _ = merge_attention(out_old, lse_old, out_new, lse_new)  # exact: disjoint key sets
            return out.to(q.dtype)
