"""Time of one decode iteration of a mixture-of-experts model on homogeneous, Lamina and AFD systems.

B running requests read S summed context tokens; L_moe layers have routed experts, L_d dense FFNs
(DeepSeek-V3's first three); blocks and their times are model/moe_ops.py, placement model/moe_memory.py;
k experts per token of width d, e bytes per element; load(b, N) is the token copies the most loaded of N
expert-parallel devices gets from b tokens (ops/moe.device_load, routing skew included).

homogeneous, N devices, experts expert parallel; the rest by moe_memory's placement:
    tensor parallel (vLLM --tensor-parallel-size N --enable-expert-parallel): every device holds all B
    tokens; MoE layer = attention block(B, 1/N of the heads) + core(B, 1/N of the KV heads) + all-reduce
    + experts(load(B, N)) + all-reduce, each all-reduce of B d e bytes;
    data parallel (DeepSeek-V3's decode layout, vLLM --data-parallel-size N --enable-expert-parallel):
    each device runs b = B/N sequences; MoE layer = attention block(b) + core(b) + dispatch +
    experts(load(B, N)) + combine, dispatch and combine each an all-to-all of b k d e bytes per rank.
    A dense layer replaces experts and exchange by the dense FFN (and, tensor parallel, its all-reduce).
Lamina, n micro-batches on R = max(1, n - 1) compute replicas of N_c / R devices (arXiv 2405.01814 v2):
    the compute replica runs a layer as above without the core (tensor or data parallel by moe_memory's
    placement, experts expert parallel), the attention pool the core on its share of the KV; the cycle of
    each layer is iteration.py's: max(n t_m / R, n t_a, t_m + t_a + t_n, n bytes / link).
AFD, m micro-batches (ping-pong for m = 2, as MegaScale-Infer, arXiv 2504.02263): the attention pool
    (N_a devices, data parallel) runs attention block + core of b/N_a tokens each, b = B/m
    (t_a); the expert pool (N_e devices, expert parallel) the routed experts of load(b, N_e) copies (t_e);
    between them the M2N dispatch and N2M combine, each t_c = latency + the larger of an attention
    device's b/N_a k d e bytes and the loaded expert device's load d e bytes over its NIC. With the
    micro-batches in flight a MoE layer takes
        cycle = max(m t_a, m t_e, m (t_c - latency), t_a + t_e + 2 t_c)
    (the busier pool, the link, or one micro-batch's dependency chain); dense layers and the head run
    on the attention pool alone (m of them back to back); iteration = L_moe cycle + L_d m t_d + m head.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from lamina_bench.catalog.models import DTYPE_BYTES, ModelSpec, net_bytes_per_token_per_layer
from lamina_bench.catalog.moe import active_params, afd_bytes_per_token_per_layer, moe_layers
from lamina_bench.model.breakdown import IterationBreakdown
from lamina_bench.model.moe_memory import experts_per_device, homogeneous_attention_tp, replica_attention_tp
from lamina_bench.model.moe_ops import (
    all_to_all_s,
    attention_block_elementwise,
    attention_block_gemms,
    attention_core_s,
    block_time_s,
    expert_block,
)
from lamina_bench.model.operators import DeviceModel
from lamina_bench.model.ops.moe import device_active_experts, device_load


def pool_send_bytes_per_token(spec: ModelSpec, dtype: str) -> int:
    """Bytes per token per layer in the larger direction of Lamina's link: GQA q, k, v out (the output
    back is smaller); MLA the latent query and new latent + RoPE key out, H (c + r) + (c + r), against the
    latent output H c back."""
    e, m = DTYPE_BYTES[dtype], spec.mla
    if m is None:
        return e * (spec.q_size + 2 * spec.kv_size)
    return e * max(spec.num_heads * m.cache_width + m.cache_width, spec.num_heads * m.kv_lora_rank)


@dataclass(frozen=True)
class MoEIterationModel:
    """Iteration time of a MoE model (module doc); the interface of iteration.IterationModel."""

    model: ModelSpec
    dtype: str
    system: str  # homogeneous | lamina | afd
    compute_count: int  # homogeneous: the group; Lamina: the compute pool; AFD: the expert pool
    attention_count: int  # homogeneous: = compute_count
    pipeline_batches: int
    compute: DeviceModel
    attention: DeviceModel
    routing_skew: float = 1.0

    @property
    def replicas(self) -> int:
        return max(1, self.pipeline_batches - 1) if self.system == "lamina" else 1

    @property
    def tp(self) -> int:
        """Devices of one compute replica (data parallel for attention blocks, expert parallel for experts)."""
        return self.compute_count // self.replicas

    @cached_property
    def _layers(self) -> tuple[int, int]:
        dense = len(self.model.moe.dense_layers)
        return self.model.num_layers - dense, dense

    def _attn_block(self, dm: DeviceModel, tokens, dense_layer: bool, tp: int = 1):
        e = DTYPE_BYTES[self.dtype]
        gemms = attention_block_gemms(self.model, tokens, dense_layer, tp)
        elementwise = attention_block_elementwise(self.model, tokens, dense_layer, e, tp)
        return block_time_s(dm, gemms, elementwise, self.dtype)

    def expert_load(self, tokens, devices: int) -> np.ndarray:
        """Token copies of the most loaded of `devices` expert devices for `tokens` routed tokens."""
        moe = self.model.moe
        return device_load(tokens, moe.num_experts, moe.top_k, devices, self.routing_skew)

    def _experts(self, dm: DeviceModel, tokens, devices: int):
        copies = self.expert_load(tokens, devices)
        active = device_active_experts(copies, experts_per_device(self.model, devices))
        gemms, elementwise = expert_block(self.model, copies, active, DTYPE_BYTES[self.dtype])
        return np.where(np.asarray(tokens) > 0, block_time_s(dm, gemms, elementwise, self.dtype), 0.0)

    def _tp_layer(self, dm: DeviceModel, tokens, devices: int):
        """(MoE layer, dense layer) time on a tensor-parallel + expert-parallel group of `devices` for
        `tokens` tokens on every device, without the attention core."""
        allreduce = dm.allreduce(tokens * self.model.hidden_size * DTYPE_BYTES[self.dtype], devices).time_s
        moe = self._attn_block(dm, tokens, False, devices) + self._experts(dm, tokens, devices)
        return moe + 2.0 * allreduce, self._attn_block(dm, tokens, True, devices) + 2.0 * allreduce

    def _ep_layer(self, dm: DeviceModel, tokens, devices: int):
        """(MoE layer, dense layer) time on a data-parallel + expert-parallel group of `devices` for `tokens`
        tokens in all, without the attention core."""
        local = tokens / devices
        dispatch = local * self.model.moe.top_k * self.model.hidden_size * DTYPE_BYTES[self.dtype]
        moe = self._attn_block(dm, local, False) + self._experts(dm, tokens, devices)
        moe = moe + 2.0 * all_to_all_s(dm, dispatch, devices)
        return moe, self._attn_block(dm, local, True)

    def breakdown(self, batch, sum_context) -> IterationBreakdown:
        batch = np.asarray(batch, dtype=float)
        sum_context = np.asarray(sum_context, dtype=float)
        run = {"homogeneous": self._homogeneous, "lamina": self._lamina, "afd": self._afd}[self.system]
        return run(batch, sum_context)

    def time_s(self, batch, sum_context) -> np.ndarray:
        return self.breakdown(batch, sum_context).time_s

    def _homogeneous(self, batch, sum_context) -> IterationBreakdown:
        spec, n, dm = self.model, self.compute_count, self.compute
        l_moe, l_dense = self._layers
        if homogeneous_attention_tp(spec, n):
            t_moe, t_dense = self._tp_layer(dm, batch, n)
            core = attention_core_s(dm, spec, self.dtype, batch, sum_context, 1.0 / n)
            head = dm.head(spec, self.dtype, batch, n).time_s
        else:
            t_moe, t_dense = self._ep_layer(dm, batch, n)
            core = attention_core_s(dm, spec, self.dtype, batch / n, sum_context / n, 1.0)
            head = dm.head(spec, self.dtype, batch / n, 1).time_s
        dense = l_moe * t_moe + l_dense * t_dense + head
        attn = spec.num_layers * core
        time = dense + attn + dm.iteration_overhead_s
        return IterationBreakdown(time, dense, attn, np.zeros_like(time), time, time)

    def _nic(self, dm: DeviceModel) -> tuple[float, float]:
        latency, bandwidth, _ = dm.nic()
        return latency, bandwidth

    def _lamina(self, batch, sum_context) -> IterationBreakdown:
        spec = self.model
        n, r, na = self.pipeline_batches, self.replicas, self.attention_count
        l_moe, l_dense = self._layers
        b, s = batch / n, sum_context / n
        if replica_attention_tp(spec, self.tp):
            t_moe, t_dense = self._tp_layer(self.compute, b, self.tp)
            head = self.compute.head(spec, self.dtype, b, self.tp).time_s
        else:
            t_moe, t_dense = self._ep_layer(self.compute, b, self.tp)
            head = self.compute.head(spec, self.dtype, b / self.tp, 1).time_s
        t_a = attention_core_s(self.attention, spec, self.dtype, b, s, 1.0 / na)
        (lat_c, bw_c), (lat_a, bw_a) = self._nic(self.compute), self._nic(self.attention)
        latency = max(lat_c, lat_a)
        bw_replica, bw_pool = min(self.tp * bw_c, na * bw_a), min(self.compute_count * bw_c, na * bw_a)
        t_n = 2.0 * latency + b * net_bytes_per_token_per_layer(spec, self.dtype) / bw_replica
        send = n * b * pool_send_bytes_per_token(spec, self.dtype) / bw_pool

        def cycle(t_m):
            return np.maximum(np.maximum(n * t_m / r, n * t_a), np.maximum(t_m + t_a + t_n, send))

        time = (
            l_moe * cycle(t_moe) + l_dense * cycle(t_dense) + n * head / r + self.compute.iteration_overhead_s
        )
        t_m_all = l_moe * t_moe + l_dense * t_dense
        return IterationBreakdown(
            time, t_m_all + head, spec.num_layers * t_a, spec.num_layers * t_n, (n * t_m_all + n * head) / r,
            spec.num_layers * n * t_a,
        )  # fmt: skip

    def _afd(self, batch, sum_context) -> IterationBreakdown:
        spec, e, m = self.model, DTYPE_BYTES[self.dtype], self.pipeline_batches
        na, ne = self.attention_count, self.compute_count
        l_moe, l_dense = self._layers
        b = batch / m
        local, s_local = b / na, sum_context / (m * na)
        core = attention_core_s(self.attention, spec, self.dtype, local, s_local, 1.0)
        t_a = self._attn_block(self.attention, local, False) + core
        t_d = self._attn_block(self.attention, local, True) + core
        t_e = self._experts(self.compute, b, ne)
        head = self.attention.head(spec, self.dtype, local, 1).time_s
        (lat_e, bw_e), (lat_a, bw_a) = self._nic(self.compute), self._nic(self.attention)
        latency = max(lat_e, lat_a)
        d_e = spec.hidden_size * e
        wire = np.maximum(local * spec.moe.top_k * d_e / bw_a, self.expert_load(b, ne) * d_e / bw_e)
        t_c = np.where(b > 0, latency + wire, 0.0)
        cycle = np.maximum(np.maximum(m * t_a, m * t_e), np.maximum(m * wire, t_a + t_e + 2.0 * t_c))
        time = l_moe * cycle + l_dense * m * t_d + m * head + self.attention.iteration_overhead_s
        attention_mb = l_moe * t_a + l_dense * t_d + head
        return IterationBreakdown(
            time, l_moe * t_e, attention_mb, l_moe * 2.0 * t_c, l_moe * m * t_e, m * attention_mb
        )

    @property
    def source(self) -> str:
        return "derived" if self.compute.derived or self.attention.derived else "modeled"

    @property
    def profile(self) -> str:
        c, a = self.compute.profile_name, self.attention.profile_name
        return c if c == a else f"compute={c};attention={a}"


def moe_link_bytes_per_token(spec: ModelSpec, system: str, dtype: str) -> float:
    """Bytes one generated token moves between the pools over all layers: Lamina's attention exchange
    (catalog net bytes per layer x L), AFD's dispatch + combine (k d e each way x L_moe), 0 for homogeneous."""
    if system == "lamina":
        return float(net_bytes_per_token_per_layer(spec, dtype) * spec.num_layers)
    if system == "afd":
        dispatch, combine = afd_bytes_per_token_per_layer(spec, dtype)
        return float((dispatch + combine) * moe_layers(spec))
    return 0.0


def moe_flops_per_token(spec: ModelSpec) -> float:
    """Matmul flops of one token: 2 per active parameter, without the embedding table (a lookup); the
    norm weights it counts are a few per million of the total."""
    return 2.0 * (active_params(spec) - spec.vocab_size * spec.hidden_size)
