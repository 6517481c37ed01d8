"""One GPU's operator model: its datasheet peaks, its (own or derived) constants, and an execution mode.

`GpuModel` answers kernel-level questions (a GEMM, a layer's ops, decode attention, an all-reduce, a
point-to-point message) in seconds; `operators.DeviceModel` uses it for the simulator's
dense_layer / head / attention_layer / allreduce / nic when the device has no measured profile.
The simulator runs in "graph" mode with vLLM's all-reduce (what serving engines run at decode) and
the Lamina paper's host-bypassed link between the pools; validation picks the mode of each file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lamina_bench.catalog.devices import DeviceSpec
from lamina_bench.catalog.models import DTYPE_BYTES, ModelSpec
from lamina_bench.errors import UserInputError
from lamina_bench.model.ops.attention import attention_bytes, attention_time_s, split_breaks
from lamina_bench.model.ops.cache import working_set
from lamina_bench.model.ops.calibration import Calibration, GpuConstants, gpu_constants, load_calibration
from lamina_bench.model.ops.collectives import (
    IMPLEMENTATIONS,
    nccl_allreduce_s,
    p2p_time_s,
    pool_link,
    vllm_allreduce_s,
)
from lamina_bench.model.ops.constants import ATTENTION_KERNELS
from lamina_bench.model.ops.gemm import check_mode, gemm_bytes, gemm_time_s, sequence_time_s
from lamina_bench.model.ops.hardware import Hardware, hardware
from lamina_bench.model.ops.layer import LayerShape, dense_layer_time_s, head_time_s, layer_op_times_s

OPMODEL = "opmodel"  # the profile name of predictions from this model (plus the calibration date)


def elem_bytes(dtype: str) -> int:
    if dtype not in ("fp16", "bf16"):
        raise UserInputError(
            f"the operator model covers fp16/bf16 (its calibration data); got dtype {dtype!r}"
        )
    return DTYPE_BYTES[dtype]


@dataclass(frozen=True)
class GpuModel:
    """Operator times on `device` (module doc). Times are seconds; arrays broadcast."""

    device: DeviceSpec
    hw: Hardware
    constants: GpuConstants
    calibration_date: str
    mode: str = "graph"
    allreduce_impl: str = "vllm"
    pool_stack: str = "lamina"

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if self.allreduce_impl not in IMPLEMENTATIONS:
            raise UserInputError(
                f"unknown all-reduce {self.allreduce_impl!r}; valid: {', '.join(IMPLEMENTATIONS)}"
            )

    @property
    def name(self) -> str:
        return f"{OPMODEL}-{self.calibration_date}"

    @property
    def derived(self) -> bool:
        return self.constants.derived

    def _v(self, family: str) -> dict[str, float]:
        return self.constants.values(family)

    @property
    def graph_gap_s(self) -> float:
        return self._v("mode")["graph_gap_s"]

    def with_mode(self, mode: str) -> GpuModel:
        return GpuModel(self.device, self.hw, self.constants, self.calibration_date, mode, self.allreduce_impl,
                        self.pool_stack)  # fmt: skip

    # ---- kernels -----------------------------------------------------------------------------------

    def gemm(self, m, n, k, dtype: str = "bf16", reuse: int = 0) -> np.ndarray:
        """One GEMM in this model's mode; `reuse` > 0: a benchmark cycling through that many weight copies
        (L2 hits, cache.py); 0 (serving): none."""
        e = elem_bytes(dtype)
        t = gemm_time_s(self._v("gemm"), self.hw, m, n, k, e, working_set(gemm_bytes(m, n, k, e), reuse))
        return sequence_time_s([t], self.mode, self.graph_gap_s)

    def layer_ops(
        self, shape: LayerShape, tokens, tp: int = 1, dtype: str = "bf16", reuse: int = 0
    ) -> dict[str, np.ndarray]:
        """Kernel-only time of each op of one layer's dense part (layer.LAYER_OPS)."""
        return layer_op_times_s(shape, tokens, tp, self._v("gemm"), self._v("elementwise"), self.hw,
                                elem_bytes(dtype), reuse)  # fmt: skip

    def dense_layer(self, shape: LayerShape, tokens, tp: int = 1, dtype: str = "bf16", reuse: int = 0):
        return dense_layer_time_s(shape, tokens, tp, self._v("gemm"), self._v("elementwise"), self.graph_gap_s,
                                  self.hw, self.mode, elem_bytes(dtype), reuse)  # fmt: skip

    def head(self, spec: ModelSpec, tokens, tp: int = 1, dtype: str = "bf16") -> np.ndarray:
        return head_time_s(spec, tokens, tp, self._v("gemm"), self._v("elementwise"), self.graph_gap_s, self.hw,
                           self.mode, elem_bytes(dtype))  # fmt: skip

    def attention(
        self, batch, context, heads, kv_heads, head_dim, dtype: str = "bf16", reuse: int = 0
    ) -> np.ndarray:
        """One decode-attention call (ATTENTION_KERNELS kernels) in this model's mode; `reuse` > 0: a
        benchmark replaying the same KV (L2 hits, cache.py); 0 (serving): none."""
        e = elem_bytes(dtype)
        ws = working_set(attention_bytes(batch, context, heads, kv_heads, head_dim, e), reuse)
        t = attention_time_s(self._v("attention"), self.hw, batch, context, heads, kv_heads, head_dim, e, ws)
        if self.mode == "kernel":
            return t
        n = int(ATTENTION_KERNELS.value)
        return sequence_time_s([t] + [0.0] * (n - 1), self.mode, self.graph_gap_s)

    def attention_breaks(self, batch: float, kv_heads: float, max_context: float) -> np.ndarray:
        """Contexts where `attention`'s time may jump (attention.split_breaks)."""
        return split_breaks(self._v("attention"), self.hw, batch, kv_heads, max_context)

    # ---- communication ------------------------------------------------------------------------------

    def allreduce(self, nbytes, world: int, link: str | None = None, impl: str | None = None, nodes: int = 1):
        """All-reduce of `nbytes` over `world` ranks: vLLM's (graph mode, one node) or NCCL's."""
        impl = impl or self.allreduce_impl
        c = self._v("allreduce")
        if impl == "vllm" and nodes == 1 and self.mode == "graph":
            kernel_s = self._v("elementwise")["t_norm_s"] + self.graph_gap_s  # collectives.py module doc
            return vllm_allreduce_s(c, self.hw, nbytes, world, kernel_s, link)
        return nccl_allreduce_s(c, self.hw, nbytes, world, link, nodes)

    def p2p(self, nbytes, link: str | None = None) -> np.ndarray:
        return p2p_time_s(self._v("p2p"), self.hw, nbytes, link)

    def pool_link(self, stack: str | None = None) -> tuple[float, float]:
        """(one-way latency s, bandwidth bytes/s) of this GPU's link to the other Lamina pool."""
        return pool_link(stack or self.pool_stack, self.hw)


def gpu_model(
    device: DeviceSpec, calibration: Calibration | None = None, mode: str = "graph", **options
) -> GpuModel | None:
    """The operator model of `device` from the committed calibration; None when there is no calibration."""
    cal = calibration or load_calibration()
    if cal is None:
        return None
    consts = gpu_constants(device.name, cal)
    return GpuModel(device, hardware(device, consts.sms), consts, cal.date, mode, **options)
