"""The attention context a model layer calls: write this step's k/v into the paged cache, attend.

One `BatchMetadata` describes a step (built by `PagedKVCache.prepare`); one `PagedAttention` serves
every layer of that step. A batch of only decode tokens goes to the paged decode kernel; any batch
with a prompt chunk goes through per-sequence causal attention over the cached prefix + new tokens.
"""

from __future__ import annotations

import torch

from reference_impl.attention.dispatch import BACKENDS, decode_attention
from reference_impl.attention.reference import gather_paged_kv, prefill_attention_ref
from reference_impl.errors import ConfigError
from reference_impl.kv_cache import BatchMetadata, PagedKVCache


class PagedAttention:
    """Per-step attention over a PagedKVCache; backend auto | torch | triton (decode batches only)."""

    def __init__(self, cache: PagedKVCache, meta: BatchMetadata, backend: str = "auto") -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"unknown attention backend {backend!r}; valid: {', '.join(BACKENDS)}")
        self.cache = cache
        self.meta = meta
        self.backend = backend

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int, scale: float | None = None
    ) -> torch.Tensor:
        """q (T,Hq,D), k/v (T,Hkv,D), sequences concatenated in meta order -> (T,Hq,D) in q's dtype.

        Writes k/v into the cache at meta.slot_mapping first. scale defaults to 1/sqrt(D).
        """
        if q.shape[0] != self.meta.num_tokens or k.shape[0] != q.shape[0] or v.shape != k.shape:
            raise ValueError(
                f"expected {self.meta.num_tokens} tokens in q, k, v; got {tuple(q.shape)}, {tuple(k.shape)}, "
                f"{tuple(v.shape)}"
            )
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        self.cache.write(layer, self.meta.slot_mapping, k, v)
        k_cache, v_cache = self.cache.k[layer], self.cache.v[layer]
        if self.meta.is_decode:
            out, _ = decode_attention(
                q, k_cache, v_cache, self.meta.block_tables, self.meta.seq_lens, scale, backend=self.backend
            )
            return out
        return self._attend_per_sequence(q, k_cache, v_cache, scale)

    def _attend_per_sequence(
        self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, scale: float
    ) -> torch.Tensor:
        # Mixed prefill/decode batch: causal attention of each sequence's new tokens over its whole
        # cached context (earlier chunks + this step's tokens), in torch.
        outs = []
        start = 0
        for b, (q_len, ctx_len) in enumerate(zip(self.meta.query_lens, self.meta.context_lens, strict=True)):
            k_ctx, v_ctx = gather_paged_kv(k_cache, v_cache, self.meta.block_tables[b], ctx_len)
            out, _ = prefill_attention_ref(q[start : start + q_len], k_ctx, v_ctx, scale, ctx_len - q_len)
            outs.append(out)
            start += q_len
        return torch.cat(outs, dim=0)
