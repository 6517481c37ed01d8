"""KV accounting of an executor: how many blocks of KV a run has, and which sequence holds which.

The engine's scheduling policy (scheduling.py) asks these questions: reserve-all reserves a request's
prompt plus max_new_tokens tokens at admission; vllm reserves the prompt's blocks at admission, grows a
sequence by a block every block_size tokens (`reserve` of more tokens for a sequence that has some) and
frees a preempted one. Both executors answer them (capacity, free blocks, reserve, free) the same
way, from one PagedKVCache's block allocator: the homogeneous executor from the cache it computes with;
the Lamina executor from a bookkeeping-only cache with the block count of every attention worker's
cache, so its answers are the attention pool's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from reference_impl.engine import Request
from reference_impl.kv_cache import PagedKVCache


class KVAccounting:
    """The KV half of engine.Executor, answered by `cache`."""

    def __init__(self, cache: PagedKVCache) -> None:
        self.cache = cache

    def kv_block_size(self) -> int:
        return self.cache.block_size

    def kv_free_blocks(self) -> int:
        return self.cache.num_free_blocks

    def kv_capacity_tokens(self) -> int:
        return self.cache.capacity_tokens

    def kv_free_tokens(self) -> int:
        return self.cache.free_tokens

    def can_reserve(self, num_tokens: int) -> bool:
        return self.cache.can_reserve(num_tokens)

    def reserve(self, seq_id: int, num_tokens: int) -> None:
        """Blocks for num_tokens tokens in all: a new sequence, or more blocks for one that has some."""
        self.cache.reserve(seq_id, num_tokens)

    def free(self, seq_id: int) -> None:
        self.cache.free(seq_id)


def bookkeeping_cache(num_blocks: int, block_size: int) -> PagedKVCache:
    """A cache for block accounting only (1 layer, 1 head, head_dim 1): the allocator, no real KV."""
    return PagedKVCache(1, 1, 1, num_blocks, block_size, torch.float32, "cpu")


def blocks_for_requests(requests: Sequence[Request], block_size: int) -> int:
    """KV blocks that serve every request at once (the default cache size: nothing waits for KV)."""
    return sum(-(-(len(r.prompt_ids) + r.max_new_tokens) // block_size) for r in requests)
