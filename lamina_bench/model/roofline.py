"""Roofline constants and shape arithmetic: bytes and flops of each decode operator of a ModelSpec.

The constants are used only where no measured profile exists; each is a stated assumption with its
reasoning, and a profile replaces all of them for its device.
"""

from __future__ import annotations

from lamina_bench.catalog.models import (
    DTYPE_BYTES,
    ModelSpec,
    kv_bytes_per_token,
    layer_matmul_params,
    net_bytes_per_token_per_layer,
)
from lamina_bench.catalog.moe import require_dense
from lamina_bench.errors import UserInputError

ROOFLINE = "roofline"

# ---- roofline constants (used only where no measured profile exists) -----------------------------
# Stated assumptions, not measurements (tag: assumed, 2025; reasoning on each); a profile replaces all of
# them for its device, and the calibrated operator model (model/ops/, operators="calibrated") replaces
# the efficiency and overhead constants with constants fitted on public measurements.
# Large bf16 GEMMs with cuBLAS typically reach ~65-75% of the datasheet dense peak on H100-class parts.
DENSE_FLOPS_EFFICIENCY = 0.70
# Streaming reads of weights through GEMV/GEMM kernels reach ~80% of datasheet HBM bandwidth.
WEIGHT_BW_EFFICIENCY = 0.80
# Paged decode-attention kernels (vLLM / FlashInfer class) reach ~70% of HBM bandwidth on long contexts.
ATTENTION_BW_EFFICIENCY = 0.70
# Attention cores are tiny GEMMs; their flops run well below peak.
ATTENTION_FLOPS_EFFICIENCY = 0.50
# Kernel launches of one layer under CUDA graphs: ~8 kernels x ~2-3 us.
DENSE_LAYER_OVERHEAD_S = 20e-6
ATTENTION_LAYER_OVERHEAD_S = 5e-6
# Bus bandwidth NCCL reaches on NVLink for MB-sized all-reduces, as a fraction of per-direction peak.
INTRA_LINK_EFFICIENCY = 0.80
# Per ring step latency of an NVLink all-reduce (NCCL small-message all-reduce ~10-20 us for 8 steps).
INTRA_LINK_STEP_LATENCY_S = 2e-6
# GPUDirect RDMA one-way latency incl. software (Lamina uses a host-bypassing stack): a few us.
NIC_LATENCY_S = 10e-6
# Achievable share of NIC line rate for large RDMA messages.
NIC_EFFICIENCY = 0.90
# Share of each device's memory kept for activations, CUDA graphs and allocator slack (spec: vLLM's
# default gpu_memory_utilization is 0.9, i.e. the same 10%).
WORKSPACE_RESERVE_FRACTION = 0.10


# ---- shape arithmetic (pure functions of ModelSpec) ---------------------------------------------


def layer_activation_bytes_per_token(spec: ModelSpec, dtype: str) -> float:
    """Activation bytes one token moves through a layer's GEMMs (inputs + outputs), per element size.

    x->QKV (d in, d + 2*d_kv out), attn-out->O (d in, d out), x->gate/up (d in, 2i or i out),
    act->down (i in, d out).
    """
    require_dense(spec, "the roofline")
    d, i = spec.hidden_size, spec.intermediate_size
    d_kv = spec.num_kv_heads * spec.head_dim
    up_out = 2 * i if spec.mlp == "swiglu" else i
    return (d + (d + 2 * d_kv) + 2 * d + d + up_out + i + d) * DTYPE_BYTES[dtype]


def dense_layer_bytes(spec: ModelSpec, dtype: str, batch, tp: int = 1):
    """Bytes one device moves for one layer's dense part at tensor-parallel degree `tp`."""
    e = DTYPE_BYTES[dtype]
    return (layer_matmul_params(spec) * e + batch * layer_activation_bytes_per_token(spec, dtype)) / tp


def dense_layer_flops(spec: ModelSpec, batch, tp: int = 1):
    """FLOPs of one layer's dense part on one device: 2 per parameter per token."""
    return 2.0 * layer_matmul_params(spec) * batch / tp


def head_bytes(spec: ModelSpec, dtype: str, batch, tp: int = 1):
    """Bytes of final norm + LM head on one device (the LM head matrix dominates)."""
    e = DTYPE_BYTES[dtype]
    return (spec.vocab_size * spec.hidden_size * e + batch * (spec.hidden_size + spec.vocab_size) * e) / tp


def head_flops(spec: ModelSpec, batch, tp: int = 1):
    return 2.0 * spec.vocab_size * spec.hidden_size * batch / tp


def kv_bytes_per_token_per_layer(spec: ModelSpec, dtype: str) -> float:
    return kv_bytes_per_token(spec, dtype) / spec.num_layers


def attention_layer_bytes(spec: ModelSpec, dtype: str, batch, sum_context, kv_fraction: float = 1.0):
    """Bytes one layer's decode attention moves on a device holding `kv_fraction` of the KV.

    KV read for `sum_context` cached tokens plus q in / output out (d elements each) per sequence.
    """
    require_dense(spec, "the roofline")
    e = DTYPE_BYTES[dtype]
    qo = batch * 2 * spec.num_heads * spec.head_dim * e
    return (sum_context * kv_bytes_per_token_per_layer(spec, dtype) + qo) * kv_fraction


def attention_layer_flops(spec: ModelSpec, sum_context, kv_fraction: float = 1.0):
    """QK^T and PV: 2 * 2 * n_heads * head_dim flops per cached token per layer."""
    require_dense(spec, "the roofline")
    return 4.0 * spec.num_heads * spec.head_dim * sum_context * kv_fraction


def ring_allreduce_bytes_per_link(nbytes, world_size: int):
    """Bytes each device sends in a ring all-reduce of `nbytes`: 2(n-1)/n of the buffer."""
    return 2.0 * (world_size - 1) / world_size * nbytes


def link_time_s(nbytes, latency_s: float, bandwidth_bytes_per_s: float):
    """Point-to-point message time: latency + bytes / bandwidth."""
    return latency_s + nbytes / bandwidth_bytes_per_s


def min_link_bandwidth_bytes_per_s(
    spec: ModelSpec, dtype: str, batch: int, mtime_s: float, atime_s: float, slowdown: float
) -> float:
    """Link bandwidth that keeps network time within `slowdown` x (MTIME + ATIME).

    Lamina (arXiv 2405.01814 v2): (2 + 2/G) * e * d * B * L / (alpha * (MTIME(B) + ATIME(B, l))),
    with MTIME / ATIME the per-iteration dense and attention times of the whole model.
    """
    require_dense(spec, "the roofline")
    if slowdown <= 0 or mtime_s + atime_s <= 0:
        raise UserInputError(f"slowdown ({slowdown}) and MTIME + ATIME ({mtime_s + atime_s} s) must be > 0")
    per_token_layer = net_bytes_per_token_per_layer(spec, dtype)
    return per_token_layer * batch * spec.num_layers / (slowdown * (mtime_s + atime_s))
