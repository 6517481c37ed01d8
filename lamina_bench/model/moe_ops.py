"""Operator times of a mixture-of-experts layer on one device model (operators.DeviceModel).

A MoE decoder layer is cut in the blocks the topologies place on different pools:

    attention block  norms, attention projections (GQA: fused qkv and o; MLA: q_a, q_b, kv_a, the absorbed
                     W_UK and W_UV per head, o), router GEMM (T x E x d), shared experts (SwiGLU of width
                     S I), and in the model's dense layers the dense FFN instead of router and experts
    attention core   decode attention over the KV cache (GQA as operators.DeviceModel; MLA latent, ops/moe.py)
    expert block     grouped GEMMs of the routed experts a device holds, and their SiLU-and-mul
    exchange         expert-parallel all-to-all inside a node, or a tensor-parallel all-reduce

Each block is timed by the device model's own method, no constant of its own: the calibrated operator
model when the device has one (every GEMM through the calibrated GEMM formula, grouped GEMMs with
ops/moe.grouped_gemm_time_s, elementwise kernels with the calibrated elementwise constants, in the
model's execution mode); a measured profile's fitted bandwidth and flops rates applied to the block's bytes
and flops (as DeviceModel does for a shape it did not profile); else the roofline of roofline.py, one
max(bytes / bandwidth, flops / peak) per block plus DENSE_LAYER_OVERHEAD_S (assumed as for a dense layer:
a block launches about as many kernels, e.g. router, top-k, permute, two grouped GEMMs, activation,
unpermute, add).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lamina_bench.catalog.models import DTYPE_BYTES, ModelSpec
from lamina_bench.errors import UserInputError
from lamina_bench.model.operators import DeviceModel
from lamina_bench.model.ops.attention import attention_bytes
from lamina_bench.model.ops.gemm import elementwise_time_s, gemm_bytes, sequence_time_s
from lamina_bench.model.ops.moe import (
    all_to_all_send_bytes,
    expert_gemms,
    grouped_gemm_time_s,
    mla_attention_bytes,
    mla_attention_flops,
)
from lamina_bench.model.roofline import (
    ATTENTION_BW_EFFICIENCY,
    ATTENTION_FLOPS_EFFICIENCY,
    ATTENTION_LAYER_OVERHEAD_S,
    DENSE_FLOPS_EFFICIENCY,
    DENSE_LAYER_OVERHEAD_S,
    INTRA_LINK_EFFICIENCY,
    INTRA_LINK_STEP_LATENCY_S,
    WEIGHT_BW_EFFICIENCY,
)

Gemm = tuple  # (groups, m, n, k): `groups` GEMMs of m x k by k x n in one kernel
Elementwise = tuple  # (kind, width, bytes), kinds of gemm.ELEMENTWISE_OPS


def attention_block_gemms(spec: ModelSpec, tokens, dense_layer: bool, tp: int = 1) -> list[Gemm]:
    """GEMMs of one layer's attention block for `tokens` on one of `tp` tensor-parallel devices (module doc):
    heads, the shared experts' and the dense FFN's width split `tp` ways (Megatron-style column / row
    parallel); the router and MLA's down-projections (q_a, kv_a) whole on every device, as vLLM runs them."""
    t = np.asarray(tokens, dtype=float)
    d, h, m = spec.hidden_size, spec.num_heads / tp, spec.mla
    if m is None:
        out = [(1.0, t, (h + 2 * spec.num_kv_heads / tp) * spec.head_dim, d), (1.0, t, d, h * spec.head_dim)]
    else:
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        q = [(1.0, t, h * qk, d)] if m.q_lora_rank is None else [(1.0, t, m.q_lora_rank, d), (1.0, t, h * qk, m.q_lora_rank)]  # fmt: skip
        out = q + [
            (1.0, t, m.cache_width, d),  # kv_a: latent + RoPE key
            (h, t, m.kv_lora_rank, m.qk_nope_head_dim),  # W_UK absorbed into the query, per head
            (h, t, m.v_head_dim, m.kv_lora_rank),  # W_UV applied to the latent output, per head
            (1.0, t, d, h * m.v_head_dim),  # o
        ]
    moe = spec.moe
    if dense_layer:
        i = spec.intermediate_size / tp
        return out + [(1.0, t, 2 * i, d), (1.0, t, d, i)]
    out.append((1.0, t, moe.num_experts, d))  # router
    if moe.num_shared_experts:
        s = moe.num_shared_experts * moe.expert_intermediate_size / tp
        out += [(1.0, t, 2 * s, d), (1.0, t, d, s)]
    return out


def attention_block_elementwise(
    spec: ModelSpec, tokens, dense_layer: bool, e: float, tp: int = 1
) -> list[Elementwise]:
    """Two RMSNorms and the residual add of width d; the SiLU-and-mul of the dense FFN or shared experts
    (split `tp` ways)."""
    t, d = np.asarray(tokens, dtype=float), spec.hidden_size
    out = [("norm", d, e * (2 * t * d + d)), ("norm", d, e * (2 * t * d + d)), ("add", d, e * 3 * t * d)]
    width = (
        spec.intermediate_size
        if dense_layer
        else spec.moe.num_shared_experts * spec.moe.expert_intermediate_size
    )
    if width:
        out.append(("act", width / tp, e * 3 * t * width / tp))
    return out


def expert_block(spec: ModelSpec, copies, experts, e: float) -> tuple[list[Gemm], list[Elementwise]]:
    """Grouped GEMMs and activation of `experts` active experts receiving `copies` token copies."""
    d, w = spec.hidden_size, spec.moe.expert_intermediate_size
    return expert_gemms(copies, experts, d, w), [("act", w, e * 3 * np.asarray(copies, dtype=float) * w)]


def _rates(dm: DeviceModel) -> tuple[float, float]:
    """(seconds per byte, seconds per flop) of a profile's dense fit on this device (DeviceModel's rule)."""
    bw_s, fl_s = dm._scale
    return dm.fits.dense[0] * bw_s, dm.fits.dense[1] * fl_s


def block_time_s(dm: DeviceModel, gemms: Sequence[Gemm], elementwise: Sequence[Elementwise], dtype: str):
    """Time of a block of GEMMs and elementwise kernels run back to back on one device (module doc)."""
    dm._check_dtype(dtype)
    e = DTYPE_BYTES[dtype]
    if dm.profile is None and dm.ops is not None:
        ops = dm.ops
        g, ew = ops._v("gemm"), ops._v("elementwise")
        times = [grouped_gemm_time_s(g, ops.hw, n, m_, n_, k, e) for n, m_, n_, k in gemms]
        times += [elementwise_time_s(ew, ops.hw, kind, w, b) for kind, w, b in elementwise]
        return sequence_time_s(times, ops.mode, ops.graph_gap_s)
    nbytes = sum(n * gemm_bytes(m_, n_, k, e) for n, m_, n_, k in gemms)
    nbytes = nbytes + sum(np.asarray(b, dtype=float) for _, _, b in elementwise)
    flops = sum(2.0 * n * np.asarray(m_, dtype=float) * n_ * k for n, m_, n_, k in gemms)
    if dm.profile is not None:
        per_byte, per_flop = _rates(dm)
        return per_byte * nbytes + per_flop * flops
    return dm._roofline(nbytes, flops, WEIGHT_BW_EFFICIENCY, DENSE_FLOPS_EFFICIENCY, DENSE_LAYER_OVERHEAD_S)


def attention_core_s(dm: DeviceModel, spec: ModelSpec, dtype: str, batch, sum_context, share: float):
    """One layer's decode attention on a device holding `share` of the KV: by KV head for GQA (every
    sequence, `share` of the heads), by sequence for MLA (`share` of the sequences, every head)."""
    dm._check_dtype(dtype)
    e = DTYPE_BYTES[dtype]
    batch, sum_context = np.asarray(batch, dtype=float), np.asarray(sum_context, dtype=float)
    context = sum_context / np.maximum(batch, 1.0)
    m, h = spec.mla, spec.num_heads
    if m is None:
        kv_heads = max(1.0, spec.num_kv_heads * share)
        heads, hd = kv_heads * spec.group_size, spec.head_dim
        nbytes = attention_bytes(batch, context, heads, kv_heads, hd, e)
        flops = 4.0 * heads * hd * sum_context
        ops_args = (batch, context, heads, kv_heads, hd)
    else:  # the latent read once for all heads: one "KV head" of width (c + r) / 2 per K and V (ops doc)
        nbytes = mla_attention_bytes(
            batch * share, sum_context * share, h, m.kv_lora_rank, m.qk_rope_head_dim, e
        )
        flops = mla_attention_flops(sum_context * share, h, m.kv_lora_rank, m.qk_rope_head_dim)
        ops_args = (batch * share, context, h, 1.0, m.cache_width / 2.0)
    if dm.profile is None and dm.ops is not None:
        t = dm.ops.attention(*ops_args, dtype)
        if m is not None:  # MLA's 2 H (2c + r) flops per token can bound it: the GEMM's calibrated rate
            t = np.maximum(t, flops / (dm.ops.hw.flops * dm.ops._v("gemm")["eta_cmp"]))
    elif dm.profile is not None:
        bw_s, _ = dm._scale
        a = dm.fits.attention
        t = a[0] + a[1] * batch * (share if m is not None else 1.0) + a[2] * bw_s * nbytes
    else:
        t = dm._roofline(
            nbytes, flops, ATTENTION_BW_EFFICIENCY, ATTENTION_FLOPS_EFFICIENCY, ATTENTION_LAYER_OVERHEAD_S
        )
    return np.where(batch > 0, t, 0.0)


def all_to_all_s(dm: DeviceModel, nbytes, world: int):
    """Expert-parallel all-to-all inside a node: each rank sends (N - 1)/N of its `nbytes` to the others at
    once over its own link (a switched fabric), latency-bandwidth like the pool's other messages: the
    calibrated point-to-point message (t_fixed + bytes / (link eta)), a profile's fitted link, or the
    roofline's NVLink (one step latency per peer + bytes / (bandwidth x efficiency))."""
    nbytes = np.asarray(nbytes, dtype=float)
    if world <= 1:
        return np.zeros_like(nbytes)
    send = all_to_all_send_bytes(nbytes, world)
    if dm.profile is None and dm.ops is not None:
        return dm.ops.p2p(send)
    f = dm.fits
    if f is not None and f.link is not None and not dm.derived:
        return f.link[0] + f.link[1] * send
    if dm.device is None or dm.device.intra_link_bytes_per_s is None:
        raise UserInputError(
            f"device {dm.name} has no intra_link_bytes_per_s; cannot model expert parallelism"
        )
    return INTRA_LINK_STEP_LATENCY_S * (world - 1) + send / (
        dm.device.intra_link_bytes_per_s * INTRA_LINK_EFFICIENCY
    )
