"""Block allocator and paged KV cache accounting: reserve / grow / free, OutOfBlocks atomicity, capacity."""

import pytest
import torch

from reference_impl.errors import ConfigError
from reference_impl.kv_cache import BlockAllocator, OutOfBlocks, PagedKVCache


def small_cache(num_blocks=8, block_size=16):
    return PagedKVCache(
        num_layers=2, num_kv_heads=2, head_dim=4, num_blocks=num_blocks, block_size=block_size
    )


# ---- allocator ---------------------------------------------------------------------------------


def test_allocator_allocates_distinct_blocks_and_frees():
    alloc = BlockAllocator(5)
    a, b = alloc.allocate(2), alloc.allocate(3)
    assert sorted(a + b) == [0, 1, 2, 3, 4]
    assert alloc.num_free == 0 and alloc.num_total == 5
    alloc.free(a)
    assert alloc.num_free == 2
    assert sorted(alloc.allocate(2)) == sorted(a)


def test_allocator_out_of_blocks_allocates_nothing():
    alloc = BlockAllocator(3)
    alloc.allocate(2)
    with pytest.raises(OutOfBlocks, match="need 2 KV blocks, 1 of 3 are free"):
        alloc.allocate(2)
    assert alloc.num_free == 1
    assert len(alloc.allocate(1)) == 1


def test_allocator_double_free_is_an_error():
    alloc = BlockAllocator(4)
    blocks = alloc.allocate(2)
    alloc.free(blocks)
    with pytest.raises(ValueError, match="double free"):
        alloc.free(blocks)
    with pytest.raises(ValueError, match="double free"):
        alloc.free([3])  # never allocated
    assert alloc.num_free == 4


def test_allocator_rejects_empty_pool():
    with pytest.raises(ConfigError, match="num_blocks must be >= 1"):
        BlockAllocator(0)


# ---- cache accounting --------------------------------------------------------------------------


def test_cache_shapes_and_capacity_hand_worked():
    cache = PagedKVCache(
        num_layers=3, num_kv_heads=2, head_dim=8, num_blocks=10, block_size=16, dtype=torch.float16
    )
    assert cache.k.shape == (3, 10, 16, 2, 8) and cache.v.dtype == torch.float16
    assert cache.capacity_tokens == 160 and cache.free_tokens == 160
    assert cache.bytes_per_token == 2 * 3 * 2 * 8 * 2  # k and v, 3 layers, 2 heads, D 8, 2 B = 192
    # 1e6 B budget / (192 B/token * 16 tokens/block) = 325.5 -> 325 whole blocks
    assert PagedKVCache.num_blocks_for_bytes(1_000_000, 3, 2, 8, 16, torch.float16) == 325


def test_reserve_grow_free_accounting():
    cache = small_cache(num_blocks=8, block_size=16)
    assert cache.blocks_needed(0) == 0 and cache.blocks_needed(16) == 1 and cache.blocks_needed(17) == 2
    cache.reserve("a", 20)  # 2 blocks
    assert cache.num_free_blocks == 6 and cache.length("a") == 0
    cache.reserve("a", 30)  # still 2 blocks: no growth
    assert cache.num_free_blocks == 6
    cache.reserve("a", 33)  # grows to 3
    assert cache.num_free_blocks == 5 and len(cache.block_table("a")) == 3
    assert cache.can_reserve(80) and not cache.can_reserve(81)
    cache.free("a")
    assert cache.num_free_blocks == 8 and not cache.has("a")
    with pytest.raises(KeyError, match="no KV reservation"):
        cache.length("a")


def test_reserve_out_of_blocks_leaves_state_unchanged():
    cache = small_cache(num_blocks=4)
    cache.reserve("a", 40)  # 3 blocks
    table = cache.block_table("a")
    with pytest.raises(OutOfBlocks):
        cache.reserve("b", 17)  # 2 blocks, 1 free
    with pytest.raises(OutOfBlocks):
        cache.reserve("a", 80)  # would grow by 2
    assert not cache.has("b") and cache.block_table("a") == table and cache.num_free_blocks == 1


def test_prepare_slots_and_metadata():
    cache = small_cache(num_blocks=8, block_size=16)
    cache.reserve("a", 20)
    cache.reserve("b", 1)
    meta = cache.prepare(["a", "b"], [18, 1])
    ta, tb = cache.block_table("a"), cache.block_table("b")
    want_a = [ta[0] * 16 + t for t in range(16)] + [ta[1] * 16 + t for t in range(2)]
    assert meta.slot_mapping.tolist() == want_a + [tb[0] * 16]
    assert meta.slot_mapping.dtype == torch.int64
    assert meta.context_lens == [18, 1] and meta.seq_lens.tolist() == [18, 1]
    assert meta.block_tables.dtype == torch.int32 and meta.block_tables.tolist() == [ta, tb + [0]]
    assert not meta.is_decode and cache.length("a") == 18
    # Next step: one decode token each; "a" continues at offset 2 of its second block.
    meta = cache.prepare(["a", "b"], [1, 1])
    assert meta.is_decode and meta.slot_mapping.tolist() == [ta[1] * 16 + 2, tb[0] * 16 + 1]
    assert meta.context_lens == [19, 2]


def test_prepare_grows_on_demand_and_rolls_back_on_out_of_blocks():
    cache = small_cache(num_blocks=3, block_size=16)
    cache.reserve("a", 16)
    cache.reserve("b", 16)
    cache.prepare(["a", "b"], [16, 16])  # both blocks full
    meta = cache.prepare(["a"], [1])  # grows "a" into the last free block
    assert cache.num_free_blocks == 0 and len(cache.block_table("a")) == 2 and meta.context_lens == [17]
    cache.free("a")
    cache.reserve("c", 1)  # takes one of the two freed blocks
    with pytest.raises(OutOfBlocks):
        cache.prepare(["b", "c"], [1, 40])  # b grows by 1 (ok), c needs 2 more (only 0 left after b)
    assert cache.num_free_blocks == 1 and len(cache.block_table("b")) == 1
    assert cache.length("b") == 16 and cache.length("c") == 0


def test_prepare_rejects_unknown_and_duplicate_sequences():
    cache = small_cache()
    cache.reserve("a", 4)
    with pytest.raises(KeyError, match="'zz' has no KV reservation"):
        cache.prepare(["a", "zz"], [1, 1])
    with pytest.raises(ValueError, match="appears twice"):
        cache.prepare(["a", "a"], [1, 1])
    assert cache.length("a") == 0


def test_write_puts_tokens_at_their_slots():
    cache = small_cache(num_blocks=4, block_size=16)
    cache.reserve("a", 3)
    meta = cache.prepare(["a"], [3])
    k, v = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    cache.write(1, meta.slot_mapping, k, v)
    block = cache.block_table("a")[0]
    assert torch.equal(cache.k[1, block, :3], k) and torch.equal(cache.v[1, block, :3], v)
    assert torch.count_nonzero(cache.k[0]) == 0  # other layer untouched
