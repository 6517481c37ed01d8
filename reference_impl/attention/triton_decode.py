"""Paged flash-decoding in Triton: one query token per sequence over a paged KV cache.

Two launches (flash-decoding, Dao et al. 2023; online softmax as in triton's 06-fused-attention):
1. split kernel, grid (B, Hkv, num_splits): the program of (sequence b, kv head h, split s) walks the
   cache pages of its share of the sequence, one page per iteration, for all G = Hq/Hkv query heads
   of kv head h at once, so each K/V page is read once per group. It writes a partial output and the
   natural-log lse of its keys (-inf and 0 for a split with no keys).
2. merge kernel, grid (B, Hq): combines the splits exactly with their lse (see merge.py).

Supported: block_size a power of two in [16, 256] (one page = one tile of keys; tl.dot needs >= 16),
any head_dim (padded to a power of two >= 16), any G (the query rows are padded to a power of two
>= 16 and masked), fp32/fp16/bf16 with q, k and v of one dtype, variable sequence lengths (0 gives
out 0, lse -inf). On a GPU one page of K plus V (2 * block_size * padded head_dim * element bytes)
must fit in 160 KB of shared memory (e.g. fp32 with block_size 256 and head_dim 128 does not); the
software-pipeline depth is lowered for large pages. Precondition (not checked, that would need a device sync): block_tables[b] holds
ceil(seq_lens[b] / block_size) valid block ids.

Numerics: scores and the softmax are fp32. On a GPU, fp16/bf16 operands go to tl.dot as they are
(fp32 accumulation; p is rounded to the value dtype before p@V, as in FlashAttention); fp32 inputs use
input_precision="ieee" (no tf32). Under TRITON_INTERPRET=1 every operand is cast to fp32 after the load
because the interpreter's bf16 dot is wrong.
"""

from __future__ import annotations

import math
import os

import torch

from reference_impl.errors import ConfigError

if not torch.cuda.is_available():
    # The interpreter is chosen when @triton.jit runs, so the variable must be set before the kernels
    # below are defined; setdefault keeps an explicit choice of the caller.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

_LOG2_E = 1.4426950408889634  # log2(e): softmax in base 2 uses exp2
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _decode_split_kernel(
    q_ptr,  # (B, Hq, D)
    k_ptr,  # (num_blocks, BLOCK_SIZE, Hkv, D)
    v_ptr,  # (num_blocks, BLOCK_SIZE, Hkv, D)
    block_tables_ptr,  # (B, max_blocks) int32
    seq_lens_ptr,  # (B,) int32
    part_out_ptr,  # (B, Hq, S, D) fp32
    part_lse_ptr,  # (B, Hq, S) fp32
    scale_log2,  # softmax scale * log2(e)
    pages_per_split,
    stride_qb,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_vb,
    stride_vt,
    stride_vh,
    stride_btb,
    stride_ob,
    stride_oh,
    stride_os,
    stride_lb,
    stride_lh,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + b)
    first_page = split * pages_per_split
    last_page = tl.minimum(first_page + pages_per_split, tl.cdiv(seq_len, BLOCK_SIZE))

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_t = tl.arange(0, BLOCK_SIZE)
    g_mask = offs_g < GROUP
    d_mask = offs_d < HEAD_DIM
    heads = kv_head * GROUP + offs_g  # query heads of this kv head (GQA)
    q = tl.load(
        q_ptr + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
        mask=g_mask[:, None] & d_mask[None, :],
        other=0.0,
    )  # (BLOCK_G, BLOCK_D); padded rows are 0 and never stored
    if DOT_FP32:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)  # running max, base-2 units
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)  # running sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    for page in range(first_page, last_page):
        block = tl.load(block_tables_ptr + b * stride_btb + page).to(tl.int64)
        t_mask = page * BLOCK_SIZE + offs_t < seq_len
        kv_mask = t_mask[:, None] & d_mask[None, :]
        k = tl.load(
            k_ptr + block * stride_kb + offs_t[:, None] * stride_kt + kv_head * stride_kh + offs_d[None, :],
            mask=kv_mask,
            other=0.0,
        )  # (BLOCK_SIZE, BLOCK_D)
        v = tl.load(
            v_ptr + block * stride_vb + offs_t[:, None] * stride_vt + kv_head * stride_vh + offs_d[None, :],
            mask=kv_mask,
            other=0.0,
        )
        if DOT_FP32:
            s = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        # Every page in range has >= 1 valid key (page < cdiv(seq_len)), so m_new stays finite.
        s = tl.where(t_mask[None, :], s * scale_log2, float("-inf"))  # (BLOCK_G, BLOCK_SIZE)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if DOT_FP32:  # noqa: SIM108 (kept parallel to the score dot above)
            pv = tl.dot(p, v.to(tl.float32), input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m_i = m_new

    has_keys = l_i > 0.0
    l_safe = tl.where(has_keys, l_i, 1.0)  # a split without keys: avoid log2(0) and 0/0
    lse = tl.where(
        has_keys, (m_i + tl.log2(l_safe)) * 0.6931471805599453, float("-inf")
    )  # * ln 2: natural log
    out = acc / l_safe[:, None]
    out_rows = part_out_ptr + b * stride_ob + heads[:, None] * stride_oh + split * stride_os
    tl.store(out_rows + offs_d[None, :], out, mask=g_mask[:, None] & d_mask[None, :])
    tl.store(part_lse_ptr + b * stride_lb + heads * stride_lh + split, lse, mask=g_mask)


@triton.jit
def _merge_splits_kernel(
    part_out_ptr,  # (B, Hq, S, D) fp32, contiguous
    part_lse_ptr,  # (B, Hq, S) fp32, contiguous
    out_ptr,  # (B, Hq, D), q's dtype
    lse_ptr,  # (B, Hq) fp32
    num_heads,
    num_splits,
    stride_ob,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    row = b * num_heads + h
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_mask = offs_s < num_splits
    d_mask = offs_d < HEAD_DIM
    lses = tl.load(part_lse_ptr + row * num_splits + offs_s, mask=s_mask, other=float("-inf"))
    m = tl.max(lses, 0)
    m = tl.where(m > float("-inf"), m, 0.0)  # all splits empty: any finite reference gives weights 0
    w = tl.exp(lses - m)  # (BLOCK_S,)
    denom = tl.sum(w, 0)
    parts = tl.load(
        part_out_ptr + (row * num_splits + offs_s[:, None]) * HEAD_DIM + offs_d[None, :],
        mask=s_mask[:, None] & d_mask[None, :],
        other=0.0,
    )  # (BLOCK_S, BLOCK_D)
    denom_safe = tl.where(denom > 0.0, denom, 1.0)  # zero-length sequence: out 0, lse -inf
    out = tl.sum(parts * w[:, None], 0) / denom_safe
    lse = tl.where(denom > 0.0, m + tl.log(denom_safe), float("-inf"))
    tl.store(out_ptr + b * stride_ob + h * stride_oh + offs_d, out.to(out_ptr.dtype.element_ty), mask=d_mask)
    tl.store(lse_ptr + row, lse)


def is_interpreting() -> bool:
    """True if the kernels above were built for the Triton interpreter (CPU tensors)."""
    return type(_decode_split_kernel).__name__ == "InterpretedFunction"


def _pow2_at_least_16(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


# Shared memory per block: A100 164 KB, H100/H200 228 KB (NVIDIA tuning guides); keep headroom.
_SMEM_LIMIT_BYTES = 160_000
_SMEM_PIPELINE_BYTES = 96_000  # budget for prefetched pages beyond the current one


def num_stages_for(block_size: int, block_d: int, elem_bytes: int) -> int:
    """Software-pipeline depth on a GPU: up to 3 pages of K and V in flight, fewer for big pages."""
    page_bytes = 2 * block_size * block_d * elem_bytes  # one K and one V tile
    if page_bytes > _SMEM_LIMIT_BYTES:
        raise ConfigError(
            f"one KV page takes {page_bytes} B of shared memory (block_size {block_size} x head_dim "
            f"{block_d} x {elem_bytes} B x 2), over {_SMEM_LIMIT_BYTES} B: use a smaller block_size or 16-bit"
        )
    return max(1, min(3, _SMEM_PIPELINE_BYTES // page_bytes))


def default_num_splits(batch: int, num_kv_heads: int, max_blocks: int, device: torch.device) -> int:
    """Splits so that B * Hkv * splits is about 2 programs per SM; 1 in the interpreter.

    Uses the block-table width (not the true max length) so that no device sync is needed.
    """
    if device.type != "cuda":
        return 1
    num_sms = torch.cuda.get_device_properties(device).multi_processor_count
    wanted = math.ceil(2 * num_sms / max(1, batch * num_kv_heads))
    return max(1, min(wanted, max_blocks))


def _validate(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables, seq_lens) -> None:
    if q.dim() != 3 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ConfigError(
            f"expected q (B,Hq,D) and k/v caches (num_blocks,block_size,Hkv,D) of one shape, got "
            f"q {tuple(q.shape)}, k {tuple(k_cache.shape)}, v {tuple(v_cache.shape)}"
        )
    block_size, num_kv_heads, head_dim = k_cache.shape[1:]
    if q.shape[2] != head_dim or q.shape[1] % num_kv_heads:
        raise ConfigError(f"q {tuple(q.shape)} does not fit kv heads {num_kv_heads} x head_dim {head_dim}")
    if block_size < 16 or block_size > 256 or block_size & (block_size - 1):
        raise ConfigError(f"block_size must be a power of two in [16, 256], got {block_size}")
    if q.dtype not in SUPPORTED_DTYPES or k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ConfigError(
            f"q, k and v must share one dtype of float32/float16/bfloat16, got {q.dtype}, {k_cache.dtype}, "
            f"{v_cache.dtype}"
        )
    if block_tables.shape[0] != q.shape[0] or seq_lens.shape[0] != q.shape[0]:
        raise ConfigError(
            f"batch mismatch: q {q.shape[0]}, block_tables {block_tables.shape[0]}, seq_lens {seq_lens.shape[0]}"
        )
    devices = {t.device for t in (q, k_cache, v_cache, block_tables, seq_lens)}
    if len(devices) != 1:
        raise ConfigError(f"all tensors must be on one device, got {sorted(map(str, devices))}")
    if q.device.type == "cpu" and not is_interpreting():
        raise ConfigError(
            "CPU tensors need the Triton interpreter: set TRITON_INTERPRET=1 before importing triton"
        )


def decode_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    num_splits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paged decode attention; same contract as reference.decode_attention_ref, plus num_splits.

    q (B,Hq,D); k_cache/v_cache (num_blocks, block_size, Hkv, D); block_tables (B, max_blocks) int32;
    seq_lens (B,) int32. Returns out (B,Hq,D) in q's dtype, lse (B,Hq) fp32 (natural log).
    num_splits: sequence splits per (sequence, kv head); None picks default_num_splits.
    """
    _validate(q, k_cache, v_cache, block_tables, seq_lens)
    batch, num_q_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_q_heads // num_kv_heads
    max_blocks = block_tables.shape[1]
    if num_splits is None:
        num_splits = default_num_splits(batch, num_kv_heads, max_blocks, q.device)
    if num_splits < 1:
        raise ConfigError(f"num_splits must be >= 1, got {num_splits}")
    pages_per_split = max(1, math.ceil(max_blocks / num_splits))

    # The kernels index the last dim with stride 1.
    q, k_cache, v_cache = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k_cache, v_cache))
    block_tables = block_tables.to(torch.int32).contiguous()
    seq_lens = seq_lens.to(torch.int32).contiguous()
    part_out = torch.empty((batch, num_q_heads, num_splits, head_dim), dtype=torch.float32, device=q.device)
    part_lse = torch.empty((batch, num_q_heads, num_splits), dtype=torch.float32, device=q.device)
    block_d = _pow2_at_least_16(head_dim)
    _decode_split_kernel[(batch, num_kv_heads, num_splits)](
        q, k_cache, v_cache, block_tables, seq_lens, part_out, part_lse,
        scale * _LOG2_E, pages_per_split,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0),
        part_out.stride(0), part_out.stride(1), part_out.stride(2),
        part_lse.stride(0), part_lse.stride(1),
        GROUP=group, BLOCK_G=_pow2_at_least_16(group), HEAD_DIM=head_dim, BLOCK_D=block_d,
        BLOCK_SIZE=block_size, DOT_FP32=is_interpreting() or q.dtype == torch.float32,
        num_stages=num_stages_for(block_size, block_d, q.element_size()) if q.is_cuda else 1,
    )  # fmt: skip
    out = torch.empty((batch, num_q_heads, head_dim), dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, num_q_heads), dtype=torch.float32, device=q.device)
    _merge_splits_kernel[(batch, num_q_heads)](
        part_out, part_lse, out, lse, num_q_heads, num_splits, out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_S=triton.next_power_of_2(num_splits),
    )  # fmt: skip
    return out, lse
