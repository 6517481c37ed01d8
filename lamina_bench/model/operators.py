"""Per-operator time model of LLM decoding: measured profiles where they exist, a roofline otherwise.

The simulator (`model/iteration.py`) only composes the operator times defined here:

* dense part of one decoder layer (norms, QKV/O projections, MLP) as a function of batch size;
* the model head (final norm + LM head) once per iteration;
* decode attention of one layer as a function of batch and summed context;
* tensor-parallel all-reduce (ring: 2(n-1) steps, 2(n-1)/n of the bytes on each link);
* a point-to-point link (latency + bytes / bandwidth), used between the compute and attention pools.

Where no profile exists, each operator is either the calibrated GPU operator model (`model/ops/`: GEMM,
elementwise, decode-attention and collective kernels with constants fitted on public measurements,
results/validation/; `operators="calibrated"`, the default) or a roofline,
``max(bytes / (peak_bw * eff_bw), flops / (peak * eff_flops))`` plus a fixed launch overhead, with the
efficiency factors stated in roofline.py (`operators="roofline"`, kept as a named alternative). A
measured profile (``results/profiles/<device>-<backend>.json``) replaces both for that device (format: `model/profiles.py`).

Using a profile: for the profiled shape (same hidden/intermediate/head sizes, dtype and tp) dense time is
interpolated between the measured batch points (source ``measured``). For another shape or tp, the
points are fitted with ``t = bytes / bw_eff + flops / flops_eff`` (non-negative least squares on
relative error) and the fit is applied to the new shape's bytes and flops (source ``modeled``). One
shape cannot separate a fixed launch cost from weight streaming (both are constant in batch), so the
fixed cost is folded into ``bw_eff`` and scales with layer size: profile a shape close in size to the
models you will predict (e.g. one layer of a 7B-70B model on a GPU). Attention
is fitted with ``t = c0 + c1 * batch + kv_bytes / bw_eff`` for every shape (``measured`` for the profiled
shape, ``modeled`` otherwise). A profile taken on device A and applied to device B rescales
``bw_eff`` and ``flops_eff`` by B's datasheet peaks over A's; that prediction's source is ``derived``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from lamina_bench.catalog.devices import DeviceSpec, get_device
from lamina_bench.catalog.models import ModelSpec, same_layer_shape
from lamina_bench.errors import UserInputError
from lamina_bench.model.ops.device import GpuModel, gpu_model
from lamina_bench.model.ops.layer import LayerShape
from lamina_bench.model.profile_fit import _fit_profile, _interp_extrap, _ProfileFits
from lamina_bench.model.profile_fit import nonneg_fit as nonneg_fit  # re-exported: its home before the split
from lamina_bench.model.profiles import Profile, find_profile
from lamina_bench.model.roofline import (
    ATTENTION_BW_EFFICIENCY,
    ATTENTION_FLOPS_EFFICIENCY,
    ATTENTION_LAYER_OVERHEAD_S,
    DENSE_FLOPS_EFFICIENCY,
    DENSE_LAYER_OVERHEAD_S,
    INTRA_LINK_EFFICIENCY,
    INTRA_LINK_STEP_LATENCY_S,
    NIC_EFFICIENCY,
    NIC_LATENCY_S,
    ROOFLINE,
    WEIGHT_BW_EFFICIENCY,
    attention_layer_bytes,
    attention_layer_flops,
    dense_layer_bytes,
    dense_layer_flops,
    head_bytes,
    head_flops,
    ring_allreduce_bytes_per_link,
)
from lamina_bench.results.metrics import SOURCES


@dataclass(frozen=True)
class OpTime:
    """A predicted operator time with where it came from."""

    time_s: np.ndarray | float
    source: str
    profile: str

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")


# ---- per-device operator model ------------------------------------------------------------------


def _require(device: DeviceSpec, fields: Iterable[str], what: str) -> None:
    missing = [f for f in fields if getattr(device, f) is None]
    if missing:
        raise UserInputError(
            f"device {device.name} has no {', '.join(missing)} in the catalog; cannot model {what} "
            "(add it to a catalog file or give a measured profile)"
        )


@dataclass(frozen=True)
class DeviceModel:
    """Operator times on one device type: from `profile` when given, else from `ops` (the calibrated
    GPU operator model) when given, else the roofline of `device`.

    A profile whose device differs from `device` is applied by datasheet ratios (source `derived`).
    `device` may be None only with a profile of a device that has no catalog entry (e.g. "cpu").
    """

    device: DeviceSpec | None
    profile: Profile | None = None
    ops: GpuModel | None = None

    def __post_init__(self) -> None:
        if self.device is None and self.profile is None:
            raise ValueError("DeviceModel needs a device spec, a profile, or both")

    @property
    def name(self) -> str:
        return self.device.name if self.device is not None else self.profile.device

    @property
    def profile_name(self) -> str:
        if self.profile is not None:
            return self.profile.name
        return self.ops.name if self.ops is not None else ROOFLINE

    @property
    def _ops(self) -> GpuModel | None:
        """The operator model, used only where no profile exists."""
        return self.ops if self.profile is None else None

    def _ops_time(self, t) -> OpTime:
        return OpTime(t, "derived" if self.ops.derived else "modeled", self.ops.name)

    @property
    def derived(self) -> bool:
        return (
            self.profile is not None and self.device is not None and self.profile.device != self.device.name
        )

    @cached_property
    def fits(self) -> _ProfileFits | None:
        return _fit_profile(self.profile) if self.profile is not None else None

    @cached_property
    def _scale(self) -> tuple[float, float]:
        """(bandwidth, flops) multipliers of time terms when a profile is applied to another device."""
        if not self.derived:
            return 1.0, 1.0
        try:
            src = get_device(self.profile.device)
        except UserInputError:
            raise UserInputError(
                f"cannot derive {self.device.name} from profile {self.profile.name}: "
                f"{self.profile.device} is not in the device catalog"
            ) from None
        for dev in (src, self.device):
            _require(dev, ("mem_bandwidth_bytes_per_s", "bf16_flops_per_s"), "a derived profile")
        return (
            src.mem_bandwidth_bytes_per_s / self.device.mem_bandwidth_bytes_per_s,
            src.bf16_flops_per_s / self.device.bf16_flops_per_s,
        )

    def _source(self, same_shape: bool) -> str:
        if self.profile is None:
            return "modeled"
        if self.derived:
            return "derived"
        return "measured" if same_shape else "modeled"

    def _roofline(self, nbytes, flops, bw_eff: float, flops_eff: float, overhead_s: float):
        dev = self.device
        _require(dev, ("mem_bandwidth_bytes_per_s", "bf16_flops_per_s"), "operator times")
        t_mem = nbytes / (dev.mem_bandwidth_bytes_per_s * bw_eff)
        t_flops = flops / (dev.bf16_flops_per_s * flops_eff)
        return overhead_s + np.maximum(t_mem, t_flops)

    def _check_dtype(self, dtype: str) -> None:
        if self.profile is None and dtype not in ("fp16", "bf16"):
            raise UserInputError(
                f"the roofline models fp16/bf16 only (datasheet bf16 peak); got dtype {dtype!r}"
            )

    def dense_layer(self, spec: ModelSpec, dtype: str, batch, tp: int = 1) -> OpTime:
        """One decoder layer's dense part for `batch` tokens on one device of a `tp`-way replica."""
        self._check_dtype(dtype)
        batch = np.asarray(batch, dtype=float)
        if self._ops is not None:
            return self._ops_time(self.ops.dense_layer(LayerShape.of(spec), batch, tp, dtype))
        nbytes = dense_layer_bytes(spec, dtype, batch, tp)
        flops = dense_layer_flops(spec, batch, tp)
        if self.profile is None:
            t = self._roofline(
                nbytes, flops, WEIGHT_BW_EFFICIENCY, DENSE_FLOPS_EFFICIENCY, DENSE_LAYER_OVERHEAD_S
            )
            return OpTime(t, "modeled", ROOFLINE)
        p, f = self.profile, self.fits
        same = same_layer_shape(spec, p.model) and dtype == p.dtype and tp == p.tp
        if same and not self.derived:
            t = _interp_extrap(batch, f.dense_batch, f.dense_time_s)
        else:
            bw_s, fl_s = self._scale
            t = f.dense[0] * bw_s * nbytes + f.dense[1] * fl_s * flops
        return OpTime(t, self._source(same), p.name)

    def head(self, spec: ModelSpec, dtype: str, batch, tp: int = 1) -> OpTime:
        """Final norm + LM head for `batch` tokens on one device of a `tp`-way replica."""
        self._check_dtype(dtype)
        batch = np.asarray(batch, dtype=float)
        if self._ops is not None:
            return self._ops_time(self.ops.head(spec, batch, tp, dtype))
        nbytes, flops = head_bytes(spec, dtype, batch, tp), head_flops(spec, batch, tp)
        if self.profile is None:
            t = self._roofline(
                nbytes, flops, WEIGHT_BW_EFFICIENCY, DENSE_FLOPS_EFFICIENCY, DENSE_LAYER_OVERHEAD_S
            )
            return OpTime(t, "modeled", ROOFLINE)
        p, f = self.profile, self.fits
        same = (
            f.head_batch is not None
            and (spec.vocab_size, spec.hidden_size) == (p.model.vocab_size, p.model.hidden_size)
            and dtype == p.dtype
            and tp == p.tp
        )
        if same and not self.derived:
            t = _interp_extrap(batch, f.head_batch, f.head_time_s)
        else:  # the dense fit's bandwidth and flops rates applied to the head's bytes and flops
            bw_s, fl_s = self._scale
            t = f.dense[0] * bw_s * nbytes + f.dense[1] * fl_s * flops
        return OpTime(t, self._source(same), p.name)

    def attention_layer(
        self, spec: ModelSpec, dtype: str, batch, sum_context, kv_fraction: float = 1.0
    ) -> OpTime:
        """One layer's decode attention on a device holding `kv_fraction` of every sequence's KV."""
        self._check_dtype(dtype)
        batch = np.asarray(batch, dtype=float)
        if self._ops is not None:  # every sequence at the mean context; heads on this device by KV share
            kv_heads = max(1.0, spec.num_kv_heads * kv_fraction)
            heads = kv_heads * spec.group_size
            context = np.asarray(sum_context, dtype=float) / np.maximum(batch, 1.0)
            t = self.ops.attention(batch, context, heads, kv_heads, spec.head_dim, dtype)
            return self._ops_time(np.where(batch > 0, t, 0.0))
        nbytes = attention_layer_bytes(spec, dtype, batch, sum_context, kv_fraction)
        if self.profile is None:
            flops = attention_layer_flops(spec, sum_context, kv_fraction)
            t = self._roofline(
                nbytes, flops, ATTENTION_BW_EFFICIENCY, ATTENTION_FLOPS_EFFICIENCY, ATTENTION_LAYER_OVERHEAD_S
            )
            return OpTime(t, "modeled", ROOFLINE)
        p, f = self.profile, self.fits
        bw_s, _ = self._scale
        t = f.attention[0] + f.attention[1] * batch + f.attention[2] * bw_s * nbytes
        same = same_layer_shape(spec, p.model) and dtype == p.dtype
        return OpTime(t, self._source(same), p.name)

    def attention_breaks(
        self, spec: ModelSpec, batch: float, kv_fraction: float, max_context: float
    ) -> np.ndarray:
        """Mean contexts at which `attention_layer`'s time for `batch` sequences may jump (the calibrated
        model's split-KV launch changes with the KV block count); none for profiles and the roofline, which
        are linear or piecewise linear in the context."""
        if self._ops is None:
            return np.zeros(0)
        return self.ops.attention_breaks(batch, max(1.0, spec.num_kv_heads * kv_fraction), max_context)

    def allreduce(self, nbytes, world_size: int) -> OpTime:
        """Ring all-reduce of `nbytes` over `world_size` devices of this type (0 when world_size is 1)."""
        nbytes = np.asarray(nbytes, dtype=float)
        if world_size <= 1:
            return OpTime(np.zeros_like(nbytes), "modeled", self.profile_name)
        if self._ops is not None:
            return self._ops_time(self.ops.allreduce(nbytes, world_size))
        steps = 2.0 * (world_size - 1)
        per_link = ring_allreduce_bytes_per_link(nbytes, world_size)
        f = self.fits
        if f is not None and f.allreduce is not None and not self.derived:
            return OpTime(
                f.allreduce[0] * steps + f.allreduce[1] * per_link, "modeled", self.profile_name
            )  # a fit
        if f is not None and f.link is not None and not self.derived:  # ring over the measured p2p link
            return OpTime(f.link[0] * steps + f.link[1] * per_link, "modeled", self.profile_name)
        if self.device is None:
            raise UserInputError(
                f"profile {self.profile_name} has no allreduce or link points; cannot model TP"
            )
        _require(self.device, ("intra_link_bytes_per_s",), f"a {world_size}-way tensor-parallel all-reduce")
        bw = self.device.intra_link_bytes_per_s * INTRA_LINK_EFFICIENCY
        return OpTime(INTRA_LINK_STEP_LATENCY_S * steps + per_link / bw, "modeled", ROOFLINE)

    def nic(self) -> tuple[float, float, str]:
        """(latency_s, bandwidth_bytes_per_s, source) of this device's link to the other pool."""
        f = self.fits
        if f is not None and f.link is not None and not self.derived and f.link[1] > 0:
            return float(f.link[0]), float(1.0 / f.link[1]), "modeled"  # fitted to measured link points
        if self._ops is not None:  # the Lamina paper's host-bypassed stack over this device's NIC
            latency, bandwidth = self.ops.pool_link()
            return latency, bandwidth, "derived" if self.ops.derived else "modeled"
        if self.device is None or self.device.nic_gbps is None:
            raise UserInputError(f"device {self.name} has no nic_gbps in the catalog; cannot model the link")
        return NIC_LATENCY_S, self.device.nic_gbps * 1e9 / 8.0 * NIC_EFFICIENCY, "modeled"

    @property
    def iteration_overhead_s(self) -> float:
        return self.profile.iteration_overhead_s if self.profile is not None and not self.derived else 0.0


OPERATORS = ("roofline", "calibrated")


def device_model(
    device: DeviceSpec,
    backend: str = "cuda",
    profile_dir: str | Path | None = None,
    derive_from: Profile | None = None,
    operators: str = "calibrated",
) -> DeviceModel:
    """The model of `device`: its own profile if one is stored, else `derive_from` (derived), else the
    calibrated operator model (operators="calibrated", when a calibration is committed) or the roofline."""
    if operators not in OPERATORS:
        raise UserInputError(f"unknown operator model {operators!r}; valid: {', '.join(OPERATORS)}")
    own = find_profile(device.name, backend, profile_dir)
    ops = gpu_model(device) if operators == "calibrated" and device.bf16_flops_per_s is not None else None
    return DeviceModel(device, own if own is not None else derive_from, ops)
