"""Decode attention for the paged KV cache: torch reference, Triton paged kernel, lse merge, context.

`decode_attention` is the one switch point between the Triton kernel and the torch fallback; triton
is imported only when that backend is used.
"""

from reference_impl.attention.context import PagedAttention
from reference_impl.attention.dispatch import BACKENDS, decode_attention, resolve_backend, triton_available
from reference_impl.attention.merge import merge_attention, merge_attention_many
from reference_impl.attention.reference import (
    attention_with_lse,
    decode_attention_ref,
    gather_paged_kv,
    prefill_attention_ref,
)

__all__ = [
    "BACKENDS",
    "PagedAttention",
    "attention_with_lse",
    "decode_attention",
    "decode_attention_ref",
    "gather_paged_kv",
    "merge_attention",
    "merge_attention_many",
    "prefill_attention_ref",
    "resolve_backend",
    "triton_available",
]
