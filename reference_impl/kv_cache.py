"""Paged KV cache: a block allocator, per-sequence block tables and capacity accounting.

The cache of every layer is split into fixed-size blocks of `block_size` token slots (vLLM's
PagedAttention layout). A sequence owns a list of blocks, its *block table*; token t of the
sequence lives in slot `table[t // block_size] * block_size + t % block_size`. Blocks are handed out
from a free list, so a sequence's blocks are in general not contiguous. `prepare` hands out the slots
of a step's new tokens and returns their `BatchMetadata`, which the attention context reads.

In Lamina (arXiv 2405.01814) this cache lives on the memory devices; its size in tokens bounds the
decode batch, which is why capacity is exposed in tokens and bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from reference_impl.errors import ConfigError

DEFAULT_BLOCK_SIZE = 16  # tokens per KV block, the default of every cache and run option


@dataclass(frozen=True)
class BatchMetadata:
    """Where this step's tokens go in the cache and what each sequence attends to."""

    seq_ids: list
    query_lens: list[int]  # new tokens per sequence this step (prompt chunk, or 1 when decoding)
    context_lens: list[int]  # tokens in the cache after this step, new ones included
    slot_mapping: torch.Tensor  # (T,) int64 flat slot block*block_size + offset of each new token
    block_tables: torch.Tensor  # (B, max_blocks) int32, padded with block 0 (masked by seq_lens)
    seq_lens: torch.Tensor  # (B,) int32 == context_lens

    def __post_init__(self) -> None:
        n = len(self.seq_ids)
        if n == 0 or len(self.query_lens) != n or len(self.context_lens) != n:
            raise ValueError(
                f"need >= 1 sequence and one query_len/context_len each, got {n} ids, "
                f"{len(self.query_lens)} query_lens, {len(self.context_lens)} context_lens"
            )
        if any(q < 1 or c < q for q, c in zip(self.query_lens, self.context_lens, strict=True)):
            raise ValueError(
                f"need 1 <= query_len <= context_len, got {self.query_lens} / {self.context_lens}"
            )
        if self.slot_mapping.shape != (self.num_tokens,):
            raise ValueError(
                f"slot_mapping must be ({self.num_tokens},), got {tuple(self.slot_mapping.shape)}"
            )
        if self.block_tables.dim() != 2 or self.block_tables.shape[0] != n or self.seq_lens.shape != (n,):
            raise ValueError(
                f"block_tables must be ({n}, max_blocks) and seq_lens ({n},), got "
                f"{tuple(self.block_tables.shape)} and {tuple(self.seq_lens.shape)}"
            )

    @property
    def is_decode(self) -> bool:
        return all(q == 1 for q in self.query_lens)

    @property
    def num_tokens(self) -> int:
        return sum(self.query_lens)


class OutOfBlocks(RuntimeError):
    """Not enough free KV blocks for a request; the allocator state is left unchanged."""


class BlockAllocator:
    """Hands out block ids 0..num_blocks-1 from a free list."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ConfigError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_total = num_blocks
        # Popped from the end: low ids first, which keeps small tests readable.
        self._free = list(range(num_blocks - 1, -1, -1))
        self._used: set[int] = set()

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self, n: int) -> list[int]:
        """Return n free block ids, or raise OutOfBlocks (allocating nothing)."""
        if n < 0:
            raise ValueError(f"cannot allocate a negative number of blocks ({n})")
        if n > len(self._free):
            raise OutOfBlocks(f"need {n} KV blocks, {len(self._free)} of {self.num_total} are free")
        blocks = [self._free.pop() for _ in range(n)]
        self._used.update(blocks)
        return blocks

    def free(self, blocks: list[int]) -> None:
        """Return blocks to the free list; a block that is not allocated (double free) is an error."""
        bad = [b for b in blocks if b not in self._used]
        if bad or len(set(blocks)) != len(blocks):
            raise ValueError(f"freeing blocks that are not allocated (double free?): {sorted(set(bad))}")
        self._used.difference_update(blocks)
        self._free.extend(reversed(blocks))


class PagedKVCache:
    """k, v: (num_layers, num_blocks, block_size, num_kv_heads, head_dim) tensors on `device`.

    `length(seq)` counts the tokens whose slots were handed out by `prepare`; the caller writes their
    k/v (through `PagedAttention.attend`, every layer) in the same step.
    """

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        num_blocks: int,
        block_size: int = DEFAULT_BLOCK_SIZE,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> None:
        for name, value in (
            ("num_layers", num_layers),
            ("num_kv_heads", num_kv_heads),
            ("head_dim", head_dim),
            ("block_size", block_size),
        ):
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.block_size = block_size
        self.dtype = dtype
        self.device = torch.device(device)
        self.allocator = BlockAllocator(num_blocks)
        shape = (num_layers, num_blocks, block_size, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=dtype, device=self.device)
        self._tables: dict[object, list[int]] = {}
        self._lengths: dict[object, int] = {}

    # ---- capacity ---------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return self.allocator.num_total

    @property
    def num_free_blocks(self) -> int:
        return self.allocator.num_free

    @property
    def capacity_tokens(self) -> int:
        return self.allocator.num_total * self.block_size

    @property
    def free_tokens(self) -> int:
        """Token slots in free blocks (slack at the end of sequences' last blocks is not counted)."""
        return self.allocator.num_free * self.block_size

    @property
    def bytes_per_token(self) -> int:
        """Cache bytes one token takes over all layers, k and v: 2 * L * n_kv_heads * head_dim * e."""
        elem_bytes = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * elem_bytes

    @staticmethod
    def num_blocks_for_bytes(
        budget_bytes: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        block_size: int,
        dtype: torch.dtype,
    ) -> int:
        """How many whole blocks (all layers, k and v) fit in budget_bytes."""
        elem_bytes = torch.empty((), dtype=dtype).element_size()
        block_bytes = 2 * num_layers * num_kv_heads * head_dim * elem_bytes * block_size
        return int(budget_bytes // block_bytes)

    def blocks_needed(self, num_tokens: int) -> int:
        return math.ceil(num_tokens / self.block_size)

    def can_reserve(self, num_tokens: int) -> bool:
        """True if a new sequence of num_tokens tokens fits in the free blocks."""
        return self.blocks_needed(num_tokens) <= self.allocator.num_free

    # ---- sequences --------------------------------------------------------------------------
    def reserve(self, seq_id: object, num_tokens: int) -> None:
        """Make seq_id own blocks for at least num_tokens tokens in total (new or existing sequence).

        Raises OutOfBlocks and changes nothing if the free blocks do not suffice.
        """
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        table = self._tables.get(seq_id, [])
        missing = max(0, self.blocks_needed(num_tokens) - len(table))
        new_blocks = self.allocator.allocate(missing)
        self._tables[seq_id] = table + new_blocks
        self._lengths.setdefault(seq_id, 0)

    def free(self, seq_id: object) -> None:
        self.allocator.free(self._table(seq_id))
        del self._tables[seq_id]
        del self._lengths[seq_id]

    def length(self, seq_id: object) -> int:
        self._table(seq_id)
        return self._lengths[seq_id]

    def block_table(self, seq_id: object) -> list[int]:
        return list(self._table(seq_id))

    def has(self, seq_id: object) -> bool:
        return seq_id in self._tables

    def _table(self, seq_id: object) -> list[int]:
        try:
            return self._tables[seq_id]
        except KeyError:
            raise KeyError(f"sequence {seq_id!r} has no KV reservation; call reserve() first") from None

    def prepare(self, seq_ids: list, query_lens: list[int]) -> BatchMetadata:
        """Slots for the coming step: sequence i gets query_lens[i] new tokens after its current length.

        Grows block tables on demand; on OutOfBlocks every growth made by this call is undone and no
        length changes. Advances each length by its query_len.
        """
        if len(seq_ids) != len(query_lens) or not seq_ids:
            raise ValueError(
                f"need one query_len per sequence, got {len(seq_ids)} ids, {len(query_lens)} lens"
            )
        if len(set(seq_ids)) != len(seq_ids):
            raise ValueError(f"a sequence appears twice in one batch: {seq_ids}")
        context_lens = [self.length(s) + q for s, q in zip(seq_ids, query_lens, strict=True)]
        self._grow_all(seq_ids, context_lens)
        slots = []
        for s, q, ctx in zip(seq_ids, query_lens, context_lens, strict=True):
            table = self._tables[s]
            slots.extend(
                table[t // self.block_size] * self.block_size + t % self.block_size
                for t in range(ctx - q, ctx)
            )
            self._lengths[s] = ctx
        return BatchMetadata(
            seq_ids=list(seq_ids),
            query_lens=list(query_lens),
            context_lens=context_lens,
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=self.device),
            block_tables=self._padded_tables(seq_ids, context_lens),
            seq_lens=torch.tensor(context_lens, dtype=torch.int32, device=self.device),
        )

    def _grow_all(self, seq_ids: list, context_lens: list[int]) -> None:
        grown: list[tuple[object, int]] = []  # (seq, blocks added) to undo on failure
        try:
            for s, ctx in zip(seq_ids, context_lens, strict=True):
                before = len(self._tables[s])
                self.reserve(s, ctx)
                grown.append((s, len(self._tables[s]) - before))
        except OutOfBlocks:
            for s, added in grown:
                if added:
                    self.allocator.free(self._tables[s][-added:])
                    del self._tables[s][-added:]
            raise

    def _padded_tables(self, seq_ids: list, context_lens: list[int]) -> torch.Tensor:
        # (B, max_blocks) int32; padding is block 0, never read because seq_lens masks it.
        width = max(self.blocks_needed(c) for c in context_lens)
        rows = [
            self._tables[s][: self.blocks_needed(c)] + [0] * (width - self.blocks_needed(c))
            for s, c in zip(seq_ids, context_lens, strict=True)
        ]
        return torch.tensor(rows, dtype=torch.int32, device=self.device)

    def write(self, layer: int, slot_mapping: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v (T, Hkv, D) of one layer at the flat slots slot_mapping (T,)."""
        flat_shape = (-1, self.num_kv_heads, self.head_dim)
        self.k[layer].view(flat_shape)[slot_mapping] = k.to(self.dtype)
        self.v[layer].view(flat_shape)[slot_mapping] = v.to(self.dtype)
