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


# ---- vLLM's KV budget (scheduler `vllm`) ---------------------------------------------------------------
# vLLM sizes its KV cache as memory x gpu_memory_utilization - weights - the activation peak of a profiling
# forward pass over max_num_batched_tokens tokens - non-torch memory (CUDA context, NCCL buffers, CUDA
# graphs) (vllm/v1/worker/gpu_worker.py determine_available_memory, 2025). The two overheads as vLLM's
# profiler printed them for Llama-3-8B on one H100 80GB (vllm-project/vllm PR #10511, 2024-12-14; 8192
# batched tokens): activation peak 1.26 GiB at TP 1 and at TP 2; non-torch memory 1.79 GiB at TP 1 and
# 3.58 GiB at TP 2 (tag: spec, as printed). For other models and budgets the activation peak is scaled by
# batched tokens x hidden size (assumed: the pass's largest tensors are token rows of about the hidden
# width); non-torch memory is taken as printed for one device or a TP group, and as the one-device figure
# for a Lamina attention device (no TP collectives; its transport buffers assumed no larger).
# gpu_memory_utilization sizes the KV cache: a Lamina compute device holds none, so its weights, activation
# peak and non-torch memory may use all of its memory (a modelling choice: the knob is vLLM's share for
# the instance that holds KV, and the compute pool is not such an instance).
GIB = 2**30
VLLM_PROFILE_TOKENS, VLLM_PROFILE_HIDDEN = 8192, 4096
VLLM_ACTIVATION_PEAK_BYTES = 1.26 * GIB
VLLM_NON_TORCH_BYTES = {1: 1.79 * GIB, 2: 3.58 * GIB}  # key: 1 = one device, 2 = a TP group


def vllm_activation_bytes(spec: ModelSpec, batched_tokens: int) -> float:
    """Activation peak of vLLM's profiling pass, scaled from the printed one (module constants)."""
    scale = batched_tokens / VLLM_PROFILE_TOKENS * spec.hidden_size / VLLM_PROFILE_HIDDEN
    return VLLM_ACTIVATION_PEAK_BYTES * scale


def vllm_pool_memory(
    spec: ModelSpec,
    device: DeviceSpec,
    devices: int,
    dtype: str,
    weight_shards: int | None,
    holds_kv: bool,
    gpu_memory_utilization: float,
    batched_tokens: int,
    block_size: int,
    label: str = "",
) -> PoolMemory:
    """Memory plan of `devices` x `device` as vLLM sizes it (constants above); KV in whole blocks.

    weight_shards: TP degree of the weights on this pool, None = no weights (Lamina attention pool, which
    runs no forward pass, so no activation peak). KV is spread over all devices (replicated heads past
    num_kv_heads, as in `pool_memory`); `kv_capacity_tokens` is whole blocks x block_size. A pool that
    holds no KV (Lamina's compute pool) may use all of its memory (module constants).
    """
    requested = device.memory_bytes * (gpu_memory_utilization if holds_kv else 1.0)
    w = 0.0 if weight_shards is None else weight_bytes(spec, dtype) / weight_shards
    act = 0.0 if weight_shards is None else vllm_activation_bytes(spec, batched_tokens)
    non_torch = VLLM_NON_TORCH_BYTES[2 if (weight_shards or 1) > 1 else 1]
    usable = requested - act - non_torch
    if w > usable:
        raise UserInputError(
            f"{spec.name} does not fit on {label or f'{devices}x{device.name}'} under vLLM's budget: weights need "
            f"{w / 1e9:.1f} GB per device ({dtype}, split over {weight_shards} device(s)), each {device.name} has "
            f"{usable / 1e9:.1f} GB ({device.memory_bytes / 1e9:.0f} GB x {requested / device.memory_bytes:g} minus "
            f"{(act + non_torch) / 1e9:.1f} GB activations and non-torch memory)"
        )
    kv_per_device = usable - w if holds_kv else 0.0
    kv_share = max(1.0 / devices, 1.0 / spec.num_kv_heads) if weight_shards is not None else 1.0 / devices
    blocks = int(kv_per_device / (kv_bytes_per_token(spec, dtype) * kv_share * block_size)) if holds_kv else 0
    return PoolMemory(devices, float(device.memory_bytes), usable, w, kv_per_device, blocks * block_size)
