"""Memory of the pools of a mixture-of-experts system: which weights each device holds, how many KV tokens fit.

Placement (model/moe_iteration.py runs the same):
  homogeneous, N devices   routed experts expert parallel (ceil(E / N) experts per MoE layer); the rest
                           (attention, router, shared experts, dense layers, embeddings, head: the
                           non-routed weights) tensor parallel when the KV heads split evenly over the
                           N devices (GQA, KV by head as for a dense model), else data parallel (every
                           device the whole non-routed weights and the KV of its own sequences: MLA, whose
                           one latent per token TP would copy to every device, or more devices than KV heads).
  Lamina                   compute pool: per replica of N devices as above, without KV, tensor parallel
                           whenever the query heads split evenly; attention pool: no weights, the KV split
                           by KV head (GQA) or by sequence (MLA's shared latent).
  AFD                      attention pool: every device the non-routed weights and its sequences' KV;
                           expert pool: ceil(E / N) routed experts per MoE layer on each device.

Tensor parallel counts 1/N of every non-routed weight per device: the router, norms and MLA's
down-projections, which vLLM keeps whole on every device, are 6.0% of DeepSeek-V3's non-routed weights and
under 1% of the GQA models' (derived from the catalog shapes), so a TP device's weights are understated by
at most that share x (1 - 1/N). Every pool keeps the same workspace reserve as a dense one
(reserve_fraction, roofline.py). An expert pool that cannot hold its experts, or more expert-parallel
devices than experts, is a one-line UserInputError.
"""

from __future__ import annotations

from lamina_bench.catalog.devices import DeviceMix
from lamina_bench.catalog.models import ModelSpec, kv_bytes_per_token, weight_bytes
from lamina_bench.catalog.moe import expert_bytes, moe_layers, routed_expert_bytes
from lamina_bench.errors import UserInputError
from lamina_bench.model.memory import PoolMemory


def non_routed_bytes(spec: ModelSpec, dtype: str) -> int:
    """Bytes of every weight but the routed experts (attention, router, shared experts, dense layers,
    embeddings, head): what a data-parallel attention device holds."""
    return weight_bytes(spec, dtype) - routed_expert_bytes(spec, dtype)


def homogeneous_attention_tp(spec: ModelSpec, devices: int) -> bool:
    """Whether a homogeneous group runs the non-routed part tensor parallel (module doc)."""
    return devices > 1 and spec.mla is None and spec.num_kv_heads % devices == 0


def replica_attention_tp(spec: ModelSpec, devices: int) -> bool:
    """Whether a Lamina compute replica (no KV) runs the non-routed part tensor parallel (module doc)."""
    return devices > 1 and spec.num_heads % devices == 0


def experts_per_device(spec: ModelSpec, devices: int) -> int:
    """Routed experts per MoE layer on each of `devices` expert-parallel devices: ceil(E / N)."""
    return -(-spec.moe.num_experts // devices)


def expert_device_bytes(spec: ModelSpec, dtype: str, devices: int) -> int:
    """Routed-expert bytes one of `devices` expert-parallel devices holds: L_moe ceil(E / N) 3 d I_e e."""
    return moe_layers(spec) * experts_per_device(spec, devices) * expert_bytes(spec, dtype)


def check_expert_devices(spec: ModelSpec, mix: DeviceMix, what: str) -> None:
    """UserInputError when `mix` has more devices than the model has routed experts."""
    if mix.count > spec.moe.num_experts:
        raise UserInputError(
            f"{what} {mix} has more devices than {spec.name} has routed experts ({spec.moe.num_experts} per "
            f"layer): use at most {spec.moe.num_experts} expert devices"
        )


def _pool(
    spec: ModelSpec, mix: DeviceMix, dtype: str, weights: float, holds_kv: bool, reserve: float, what: str
) -> PoolMemory:
    device = mix.device
    usable = device.memory_bytes * (1.0 - reserve)
    if weights > usable:
        raise UserInputError(
            f"{what} {mix} cannot hold {spec.name}: each device needs {weights / 1e9:.1f} GB of weights ({dtype}), "
            f"each {device.name} has {usable / 1e9:.1f} GB usable ({device.memory_bytes / 1e9:.0f} GB minus "
            f"{reserve:.0%} workspace)"
        )
    kv = usable - weights if holds_kv else 0.0
    tokens = int(mix.count * kv / kv_bytes_per_token(spec, dtype)) if holds_kv else 0
    return PoolMemory(mix.count, float(device.memory_bytes), usable, float(weights), kv, tokens)


def moe_pools(config) -> tuple[PoolMemory, PoolMemory | None]:
    """(compute or expert pool, attention pool or None) of a MoE system.SystemConfig (module doc)."""
    spec, dtype, reserve = config.model, config.dtype, config.reserve_fraction
    shared = non_routed_bytes(spec, dtype)
    if config.system == "homogeneous":
        n = config.compute.count
        check_expert_devices(spec, config.compute, "the expert-parallel group")
        w = shared / (n if homogeneous_attention_tp(spec, n) else 1) + expert_device_bytes(spec, dtype, n)
        return _pool(spec, config.compute, dtype, w, True, reserve, "the mix"), None
    if config.system == "lamina":
        replica = DeviceMix(config.tp, config.compute.device)
        check_expert_devices(spec, replica, "a compute replica")
        w = shared / (config.tp if replica_attention_tp(spec, config.tp) else 1)
        w += expert_device_bytes(spec, dtype, config.tp)
        compute = _pool(spec, config.compute, dtype, w, False, reserve, "the compute pool")
        return compute, _pool(spec, config.attention, dtype, 0.0, True, reserve, "the attention pool")
    check_expert_devices(spec, config.compute, "the AFD expert pool")
    experts = _pool(spec, config.compute, dtype, expert_device_bytes(spec, dtype, config.compute.count), False,
                    reserve, "the AFD expert pool")  # fmt: skip
    return experts, _pool(spec, config.attention, dtype, shared, True, reserve, "the AFD attention pool")
