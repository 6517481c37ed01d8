"""Memory of a device pool: weights per device, workspace reserve and how many KV tokens fit."""

from __future__ import annotations

from dataclasses import dataclass

from lamina_bench.catalog.devices import DeviceSpec
from lamina_bench.catalog.models import ModelSpec, kv_bytes_per_token, weight_bytes
from lamina_bench.catalog.moe import require_dense
from lamina_bench.errors import UserInputError
from lamina_bench.model.roofline import WORKSPACE_RESERVE_FRACTION


@dataclass(frozen=True)
class PoolMemory:
    """Memory of one pool: what the weights take per device and how many KV tokens fit in the rest."""

    devices: int
    memory_bytes_per_device: float
    usable_bytes_per_device: float  # after the workspace reserve
    weight_bytes_per_device: float
    kv_bytes_per_device: float
    kv_capacity_tokens: int

    def max_batch_at_context(self, context_len: int) -> int:
        """Sequences of `context_len` tokens the pool's KV holds at once."""
        if context_len <= 0:
            raise UserInputError(f"context_len must be > 0, got {context_len}")
        return self.kv_capacity_tokens // context_len


def pool_memory(
    spec: ModelSpec,
    device: DeviceSpec,
    devices: int,
    dtype: str,
    weight_shards: int | None,
    holds_kv: bool = True,
    reserve_fraction: float = WORKSPACE_RESERVE_FRACTION,
    label: str = "",
) -> PoolMemory:
    """Memory plan of `devices` x `device`.

    weight_shards: the weights are split over this many devices (tensor parallel degree of one replica);
    None = the pool holds no weights (Lamina attention pool). KV (if `holds_kv`) is spread over all
    devices; with more devices than KV heads, heads are replicated, so each device holds 1/num_kv_heads.
    """
    require_dense(spec, "the memory plan")
    usable = device.memory_bytes * (1.0 - reserve_fraction)
    w = 0.0 if weight_shards is None else weight_bytes(spec, dtype) / weight_shards
    if w > usable:
        need_gb, have_gb = w / 1e9, usable / 1e9
        raise UserInputError(
            f"{spec.name} does not fit on {label or f'{devices}x{device.name}'}: weights need {need_gb:.1f} GB "
            f"per device ({dtype}, split over {weight_shards} device(s)), each {device.name} has {have_gb:.1f} GB usable "
            f"({device.memory_bytes / 1e9:.0f} GB minus {reserve_fraction:.0%} workspace)"
        )
    kv_per_device = usable - w if holds_kv else 0.0
    kv_share = max(1.0 / devices, 1.0 / spec.num_kv_heads) if weight_shards is not None else 1.0 / devices
    tokens = int(kv_per_device / (kv_bytes_per_token(spec, dtype) * kv_share)) if holds_kv else 0
    return PoolMemory(devices, float(device.memory_bytes), usable, w, kv_per_device, tokens)
