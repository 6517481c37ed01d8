"""Random inputs of paged decode attention, for tests and benchmarks of the kernels in this package.

`random_paged_inputs` gives q, a one-layer paged KV cache, block tables and sequence lengths in the
layout `decode_attention` takes. Each sequence's blocks are drawn without replacement from one shuffled
pool, so they are scattered like those of a real cache; rows are padded to the widest with random
valid block ids, which a kernel must never read (seq_lens masks them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from reference_impl.kv_cache import DEFAULT_BLOCK_SIZE


class PagedInputs(NamedTuple):
    q: torch.Tensor  # (B, Hq, D)
    k_cache: torch.Tensor  # (num_blocks, block_size, Hkv, D)
    v_cache: torch.Tensor  # (num_blocks, block_size, Hkv, D)
    block_tables: torch.Tensor  # (B, max_blocks) int32
    seq_lens: torch.Tensor  # (B,) int32


def random_paged_inputs(
    seq_lens: Sequence[int],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int = DEFAULT_BLOCK_SIZE,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    seed: int = 0,
    spare_blocks: int = 0,
    pad_blocks: int = 0,
) -> PagedInputs:
    """Standard-normal q, k and v for sequences of `seq_lens` tokens (batch = len(seq_lens)).

    spare_blocks: cache blocks no sequence owns (noise a kernel must not read); pad_blocks: extra
    padding columns in every block-table row. All values come from one generator on `device`, seeded
    with `seed`.
    """
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    needed = [-(-n // block_size) for n in seq_lens]  # blocks each sequence reads
    num_blocks = max(1, sum(needed) + spare_blocks)
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=gen, device=device).to(dtype)
    v_cache = torch.randn(shape, generator=gen, device=device).to(dtype)
    q = torch.randn((len(seq_lens), num_heads, head_dim), generator=gen, device=device).to(dtype)
    width = max(1, max(needed) + pad_blocks)
    tables = torch.randint(0, num_blocks, (len(seq_lens), width), generator=gen, device=device)
    pool = torch.randperm(num_blocks, generator=gen, device=device)
    start = 0
    for b, n in enumerate(needed):
        tables[b, :n] = pool[start : start + n]
        start += n
    lens = torch.tensor(list(seq_lens), dtype=torch.int32, device=device)
    return PagedInputs(q, k_cache, v_cache, tables.to(torch.int32), lens)
