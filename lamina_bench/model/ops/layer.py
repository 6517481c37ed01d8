"""A decoder layer's dense part and the model head, composed from GEMM and elementwise kernels.

One layer on one of `tp` tensor-parallel devices, for T tokens (kernels named as in Vidur's profiles):

    input_layernorm           norm  rows T, width d
    attn_pre_proj             GEMM  m T, n (h + 2 g) hd / tp, k d             (fused q, k, v)
    attn_rope                 rope  rows T, width (h + g) hd / tp
    attn_post_proj            GEMM  m T, n d, k h hd / tp                      (o)
    post_attention_layernorm  norm  rows T, width d
    mlp_up_proj               GEMM  m T, n 2 i / tp (gated) or i / tp, k d    (fused gate + up)
    mlp_act                   act   rows T, width i / tp
    mlp_down_proj             GEMM  m T, n d, k i / tp
    add                       add   rows T, width d                            (residual)

The attention core and the all-reduces are not part of it (attention.py, collectives.py). Kernel
bytes: a norm reads and writes T d and reads its weight; rope reads and writes q and k; SiLU-and-mul
reads gate and up and writes their product; the add reads two rows and writes one. The head is the final
norm and the LM-head GEMM (m T, n vocab / tp, k d).

A profiler that repeats the same layer (same weights) re-reads the layer's bytes every repeat
(`layer_bytes`); given that working set, the GEMMs of the layer get the L2 hits of cache.py. Serving
gives none (every layer's weights pass once per step). Elementwise kernels read what the kernel before
them wrote, an L2 effect serving has too, which their fitted eta_el already holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from lamina_bench.catalog.models import ModelSpec
from lamina_bench.catalog.moe import require_dense
from lamina_bench.model.ops.cache import working_set
from lamina_bench.model.ops.gemm import elementwise_time_s, gemm_bytes, gemm_time_s, sequence_time_s
from lamina_bench.model.ops.hardware import Hardware

LAYER_OPS = (
    "input_layernorm",
    "attn_pre_proj",
    "attn_rope",
    "attn_post_proj",
    "post_attention_layernorm",
    "mlp_up_proj",
    "mlp_act",
    "mlp_down_proj",
    "add",
)
GEMM_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")


@dataclass(frozen=True)
class LayerShape:
    hidden: int  # d
    intermediate: int  # i
    heads: int  # h
    kv_heads: int  # g
    head_dim: int  # hd
    gated: bool = True  # SwiGLU: fused gate + up projection

    @classmethod
    def of(cls, spec: ModelSpec) -> LayerShape:
        require_dense(spec, "the operator model")
        return cls(
            spec.hidden_size, spec.intermediate_size, spec.num_heads, spec.num_kv_heads, spec.head_dim,
            spec.mlp == "swiglu",
        )  # fmt: skip


@dataclass(frozen=True)
class Kernel:
    """One kernel of a layer: a GEMM (m, n, k) or an elementwise op (kind, width, bytes)."""

    name: str
    kind: str  # "gemm" | "norm" | "rope" | "act" | "add"
    m: object = None
    n: float = 0.0
    k: float = 0.0
    width: float = 0.0
    nbytes: object = None


def layer_kernels(shape: LayerShape, tokens, tp: int = 1, elem_bytes: float = 2.0) -> list[Kernel]:
    """The kernels of one layer's dense part for `tokens` (array) on one of `tp` devices (module doc)."""
    t = np.asarray(tokens, dtype=float)
    d, i, hd = shape.hidden, shape.intermediate, shape.head_dim
    q_kv = (shape.heads + 2 * shape.kv_heads) * hd / tp
    rope_w = (shape.heads + shape.kv_heads) * hd / tp
    up_n = (2 if shape.gated else 1) * i / tp
    act_in = 2 if shape.gated else 1
    e = elem_bytes
    return [
        Kernel("input_layernorm", "norm", width=d, nbytes=e * (2 * t * d + d)),
        Kernel("attn_pre_proj", "gemm", m=t, n=q_kv, k=d),
        Kernel("attn_rope", "rope", width=rope_w, nbytes=e * 2 * t * rope_w),
        Kernel("attn_post_proj", "gemm", m=t, n=d, k=shape.heads * hd / tp),
        Kernel("post_attention_layernorm", "norm", width=d, nbytes=e * (2 * t * d + d)),
        Kernel("mlp_up_proj", "gemm", m=t, n=up_n, k=d),
        Kernel("mlp_act", "act", width=i / tp, nbytes=e * (act_in + 1) * t * i / tp),
        Kernel("mlp_down_proj", "gemm", m=t, n=d, k=i / tp),
        Kernel("add", "add", width=d, nbytes=e * 3 * t * d),
    ]


def kernel_bytes(kern: Kernel, elem_bytes: float = 2.0) -> np.ndarray:
    """Bytes one kernel moves (gemm.gemm_bytes for a GEMM)."""
    if kern.kind == "gemm":
        return gemm_bytes(kern.m, kern.n, kern.k, elem_bytes)
    return np.asarray(kern.nbytes, dtype=float)


def layer_bytes(shape: LayerShape, tokens, tp: int = 1, elem_bytes: float = 2.0) -> np.ndarray:
    """Bytes one pass of the layer's dense part moves: what a profiler repeating the layer re-reads."""
    return sum(kernel_bytes(k, elem_bytes) for k in layer_kernels(shape, tokens, tp, elem_bytes))


def kernel_time_s(
    kern: Kernel, gemm: Mapping[str, float], elementwise: Mapping[str, float], hw: Hardware, elem_bytes=2.0,
    ws_bytes=None,
) -> np.ndarray:  # fmt: skip
    if kern.kind == "gemm":
        return gemm_time_s(gemm, hw, kern.m, kern.n, kern.k, elem_bytes, ws_bytes)
    return elementwise_time_s(elementwise, hw, kern.kind, kern.width, kern.nbytes)


def layer_op_times_s(
    shape: LayerShape,
    tokens,
    tp: int,
    gemm,
    elementwise,
    hw: Hardware,
    elem_bytes: float = 2.0,
    reuse: int = 0,
) -> dict[str, np.ndarray]:
    """Kernel-only time of each op of the layer (LAYER_OPS order); `reuse` > 0: the layer is repeated on the
    same weights (`reuse` copies cycled), so its GEMMs may hit in the L2 (module doc)."""
    ws = working_set(layer_bytes(shape, tokens, tp, elem_bytes), reuse)
    return {
        k.name: kernel_time_s(k, gemm, elementwise, hw, elem_bytes, ws)
        for k in layer_kernels(shape, tokens, tp, elem_bytes)
    }


def dense_layer_time_s(
    shape: LayerShape, tokens, tp: int, gemm, elementwise, graph_gap_s: float, hw: Hardware, mode: str,
    elem_bytes: float = 2.0, reuse: int = 0,
) -> np.ndarray:  # fmt: skip
    """One layer's dense part in execution `mode` (gemm.sequence_time_s)."""
    ops = layer_op_times_s(shape, tokens, tp, gemm, elementwise, hw, elem_bytes, reuse)
    return sequence_time_s(list(ops.values()), mode, graph_gap_s)


def head_time_s(
    spec: ModelSpec, tokens, tp: int, gemm, elementwise, graph_gap_s: float, hw: Hardware, mode: str,
    elem_bytes: float = 2.0,
) -> np.ndarray:  # fmt: skip
    """Final norm + LM head for `tokens` on one of `tp` devices."""
    t = np.asarray(tokens, dtype=float)
    d = spec.hidden_size
    norm = elementwise_time_s(elementwise, hw, "norm", d, elem_bytes * (2 * t * d + d))
    lm_head = gemm_time_s(gemm, hw, t, spec.vocab_size / tp, d, elem_bytes)
    return sequence_time_s([norm, lm_head], mode, graph_gap_s)
