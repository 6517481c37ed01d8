"""All-reduce and point-to-point messages between GPUs.

NCCL all-reduce of S bytes over n ranks in one node, per protocol p (LL, LL128, Simple), ring algorithm
(NCCL's intra-node tree is a chain, so it has the ring's step count):

    t_p = t_fixed + 2 (n - 1) alpha_p + 2 (n - 1) / n * S / (B_link eta_bus f_p)

f_p is the protocol's payload share of the link (constants.PROTOCOL_BW_FRACTION); NCCL's tuner picks the
fastest protocol, so t = min_p t_p. Across `nodes` > 1 (n ranks, ppn = n / nodes per node) the ring's
bottleneck is the NIC and its inter-node hops pay the RDMA latency, while the double binary tree
spans the nodes in 2 ceil(log2 nodes) inter-node steps and 2 (ppn - 1) intra-node steps, moving
2 S over each NIC; t = min(ring, tree):

    ring: t_fixed + 2 (n - 1) alpha_p + 2 nodes lat_rdma + 2 (n - 1)/n S / (B_nic eta_bus f_p)
    tree: t_fixed + 2 (ppn - 1) alpha_p + 2 ceil(log2 nodes) (alpha_p + lat_rdma) + 2 S / (B_nic eta_bus f_p)

t_fixed, alpha_LL, alpha_LL128, alpha_Simple and eta_bus are fitted per GPU on nccl-tests (nvlink);
lat_rdma is the NCCL stack's one-way latency from the Lamina paper (constants.POOL_LINK). NCCL's fixed
cost is mostly in-kernel synchronisation, so it is the same in every execution mode (assumed).

vLLM's custom all-reduce (implementation "vllm", CUDA graphs; constants.VLLM_CUSTOM_AR_MAX_BYTES for
when it applies) is composed from calibrated pieces, no constant of its own: one small kernel in a CUDA
graph (the elementwise family's RMSNorm floor t_norm + graph_gap: the custom kernel is a one-pass
elementwise kernel with a reduction, each CTA loading its slice from every rank's buffer and summing it,
as RMSNorm loads a row and reduces it; a GEMM's fixed cost also holds cuBLAS's tile set-up and epilogue,
which this kernel does not run), flag barriers of one NVLink hop each (alpha_LL: NCCL's LL step is the
same flag write and poll), and its reads over the link:

    1-stage: t_kernel + 2 alpha_LL + (n - 1) S / (B_link eta_bus)          (barriers at start and end)
    2-stage: t_kernel + 3 alpha_LL + 2 (n - 1)/n S / (B_link eta_bus)      (start, between stages, end)

Point-to-point (NCCL send/recv inside a node): t = t_fixed + S / (B_link eta_link), fitted per GPU.
The link between Lamina's pools (`pool_link`): one-way latency and bandwidth of a stack ("lamina"
host-bypassed, or "nccl") from the paper's reported figures, bandwidth scaled by this NIC's line rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from lamina_bench.errors import UserInputError
from lamina_bench.model.ops.constants import (
    POOL_LINK,
    POOL_LINK_TESTBED_BW,
    POOL_STACKS,
    PROTOCOL_BW_FRACTION,
    VLLM_CUSTOM_AR_MAX_BYTES,
)
from lamina_bench.model.ops.hardware import Hardware

PROTOCOLS = tuple(PROTOCOL_BW_FRACTION)
IMPLEMENTATIONS = ("nccl", "vllm")
ALLREDUCE_CONSTANTS = ("t_fixed_s", "alpha_LL_s", "alpha_LL128_s", "alpha_Simple_s", "eta_bus")
P2P_CONSTANTS = ("t_fixed_s", "eta_link")


def ring_steps(world: int) -> int:
    """Steps of a ring all-reduce: n - 1 of reduce-scatter, n - 1 of all-gather."""
    return 2 * (world - 1)


def ring_link_bytes(nbytes, world: int) -> np.ndarray:
    """Bytes each rank sends in a ring all-reduce: 2 (n - 1) / n of the buffer."""
    return 2.0 * (world - 1) / world * np.asarray(nbytes, dtype=float)


def _check_world(world: int, nodes: int) -> None:
    if not (isinstance(world, int | np.integer) and world >= 1 and nodes >= 1 and world % nodes == 0):
        raise UserInputError(
            f"an all-reduce needs world >= 1 split evenly over nodes; got {world} over {nodes}"
        )


def nccl_allreduce_s(
    c: Mapping[str, float], hw: Hardware, nbytes, world: int, link: str | None = None, nodes: int = 1
) -> np.ndarray:
    """NCCL all-reduce time (module doc); `c` holds ALLREDUCE_CONSTANTS; 0 for one rank."""
    _check_world(world, nodes)
    nbytes = np.asarray(nbytes, dtype=float)
    if world == 1:
        return np.zeros_like(nbytes)
    if nodes == 1:
        bw = hw.link_bw(link or hw.intra_link)
        per_protocol = [
            c["t_fixed_s"]
            + ring_steps(world) * c[f"alpha_{p}_s"]
            + ring_link_bytes(nbytes, world) / (bw * c["eta_bus"] * PROTOCOL_BW_FRACTION[p].value)
            for p in PROTOCOLS
        ]
        return np.minimum.reduce(per_protocol)
    nic, lat = hw.link_bw("rdma"), POOL_LINK["nccl"]["latency_s"].value
    ppn, hops = world // nodes, math.ceil(math.log2(nodes))
    out = []
    for p in PROTOCOLS:
        bw = nic * c["eta_bus"] * PROTOCOL_BW_FRACTION[p].value
        alpha = c[f"alpha_{p}_s"]
        ring = (
            c["t_fixed_s"] + ring_steps(world) * alpha + 2 * nodes * lat + ring_link_bytes(nbytes, world) / bw
        )
        tree = c["t_fixed_s"] + 2 * (ppn - 1) * alpha + 2 * hops * (alpha + lat) + 2.0 * nbytes / bw
        out += [ring, tree]
    return np.minimum.reduce(out)


def vllm_stages(nbytes, world: int) -> np.ndarray:
    """1 or 2: the custom all-reduce kernel vLLM picks (constants.VLLM_CUSTOM_AR_MAX_BYTES)."""
    nbytes = np.asarray(nbytes, dtype=float)
    if world == 2:
        return np.ones_like(nbytes)
    limit = 512 * 1024 if world <= 4 else 256 * 1024
    return np.where(nbytes < limit, 1.0, 2.0)


def vllm_allreduce_s(
    c: Mapping[str, float], hw: Hardware, nbytes, world: int, kernel_s: float, link: str | None = None
) -> np.ndarray:
    """vLLM's all-reduce in a CUDA graph: its custom kernels below 8 MiB, NCCL above (module doc).

    `kernel_s` is the cost of one small kernel replayed in a CUDA graph on this GPU (module doc).
    """
    _check_world(world, 1)
    nbytes = np.asarray(nbytes, dtype=float)
    if world == 1:
        return np.zeros_like(nbytes)
    bw = hw.link_bw(link or hw.intra_link) * c["eta_bus"]
    stages = vllm_stages(nbytes, world)
    one = kernel_s + 2 * c["alpha_LL_s"] + (world - 1) * nbytes / bw
    two = kernel_s + 3 * c["alpha_LL_s"] + ring_link_bytes(nbytes, world) / bw
    custom = np.where(stages == 1, one, two)
    nccl = nccl_allreduce_s(c, hw, nbytes, world, link)
    return np.where(nbytes < VLLM_CUSTOM_AR_MAX_BYTES.value, custom, nccl)


def p2p_time_s(p: Mapping[str, float], hw: Hardware, nbytes, link: str | None = None) -> np.ndarray:
    """NCCL send/recv of `nbytes` between two GPUs of one node (module doc)."""
    bw = hw.link_bw(link or hw.intra_link)
    return p["t_fixed_s"] + np.asarray(nbytes, dtype=float) / (bw * p["eta_link"])


def pool_link(stack: str, hw: Hardware) -> tuple[float, float]:
    """(one-way latency s, bandwidth bytes/s) of the link between Lamina's pools over this GPU's NIC."""
    if stack not in POOL_STACKS:
        raise UserInputError(f"unknown link stack {stack!r}; valid: {', '.join(POOL_STACKS)}")
    figures = POOL_LINK[stack]
    share = figures["bandwidth"].value / POOL_LINK_TESTBED_BW.value
    return figures["latency_s"].value, hw.link_bw("rdma") * share
