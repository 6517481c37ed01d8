"""PagedAttention over several steps of a continuous batch equals dense causal attention per sequence."""

import pytest
import torch

from reference_impl.attention import PagedAttention
from reference_impl.errors import ConfigError
from reference_impl.kv_cache import BatchMetadata, PagedKVCache

NUM_LAYERS, HQ, HKV, D = 2, 4, 2, 16

# Each step: {sequence: new tokens}. Step 1 is the mixed batch: a 7-token prefill plus two decodes.
STEPS = [
    {"b": 20, "c": 5},  # prefill only
    {"a": 7, "b": 1, "c": 1},  # mixed: prefill of 7 + two decodes
    {"a": 1, "b": 1, "c": 1},  # decode only (decode kernel path)
    {"a": 1, "b": 1, "c": 1},
    {"c": 10, "a": 1},  # a later prompt chunk of c (chunked prefill) next to a decode
    {"b": 1, "c": 1, "a": 1},
]


def dense_causal_f64(q, k, v, scale):
    """Queries are the last Tq of Tk positions; q (Tq,Hq,D), k/v (Tk,Hkv,D) -> (Tq,Hq,D) float64."""
    tq, tk = q.shape[0], k.shape[0]
    group = q.shape[1] // k.shape[1]
    k = k.double().repeat_interleave(group, dim=1)
    v = v.double().repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.double(), k) * scale
    visible = torch.arange(tk)[None, :] <= torch.arange(tk - tq, tk)[:, None]  # (Tq, Tk)
    probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    return torch.einsum("hqk,khd->qhd", probs, v)


@pytest.mark.parametrize("backend", ["torch", "triton", "auto"])
def test_mixed_batch_over_steps_equals_dense_causal(backend):
    gen = torch.Generator().manual_seed(0)
    cache = PagedKVCache(NUM_LAYERS, HKV, D, num_blocks=12, block_size=16)
    history = {}  # (seq, layer) -> (k, v) of every token so far
    for step in STEPS:
        seq_ids, query_lens = list(step), list(step.values())
        for s in seq_ids:
            if not cache.has(s):
                cache.reserve(s, step[s])  # short reservations: later steps grow on demand
        meta = cache.prepare(seq_ids, query_lens)
        attn = PagedAttention(cache, meta, backend=backend)
        for layer in range(NUM_LAYERS):
            q, k, v = (torch.randn(meta.num_tokens, h, D, generator=gen) for h in (HQ, HKV, HKV))
            out = attn.attend(q, k, v, layer)
            assert out.shape == q.shape
            start = 0
            for s, n in zip(seq_ids, query_lens, strict=True):
                k_old, v_old = history.get((s, layer), (k[:0], v[:0]))
                k_all, v_all = (
                    torch.cat([k_old, k[start : start + n]]),
                    torch.cat([v_old, v[start : start + n]]),
                )
                history[(s, layer)] = (k_all, v_all)
                want = dense_causal_f64(q[start : start + n], k_all, v_all, D**-0.5)
                torch.testing.assert_close(out[start : start + n].double(), want, atol=1e-5, rtol=1e-5)
                start += n
    assert {s: cache.length(s) for s in "abc"} == {"a": 11, "b": 24, "c": 19}


def test_explicit_scale_is_used():
    cache = PagedKVCache(1, 1, 4, num_blocks=2, block_size=16)
    cache.reserve("a", 3)
    meta = cache.prepare(["a"], [3])
    q, k, v = torch.randn(3, 2, 4), torch.randn(3, 1, 4), torch.randn(3, 1, 4)
    out = PagedAttention(cache, meta).attend(q, k, v, layer=0, scale=0.1)
    torch.testing.assert_close(out.double(), dense_causal_f64(q, k, v, 0.1), atol=1e-6, rtol=1e-6)


def test_attend_rejects_wrong_token_count_and_backend():
    cache = PagedKVCache(1, 1, 4, num_blocks=2, block_size=16)
    cache.reserve("a", 3)
    meta = cache.prepare(["a"], [3])
    with pytest.raises(ValueError, match="expected 3 tokens"):
        PagedAttention(cache, meta).attend(
            torch.randn(2, 1, 4), torch.randn(2, 1, 4), torch.randn(2, 1, 4), 0
        )
    with pytest.raises(ConfigError, match="valid: auto, torch, triton"):
        PagedAttention(cache, meta, backend="flash")


def test_batch_metadata_validates():
    with pytest.raises(ValueError, match="1 <= query_len <= context_len"):
        BatchMetadata(
            seq_ids=["a"],
            query_lens=[2],
            context_lens=[1],
            slot_mapping=torch.zeros(2, dtype=torch.int64),
            block_tables=torch.zeros(1, 1, dtype=torch.int32),
            seq_lens=torch.tensor([1], dtype=torch.int32),
        )
