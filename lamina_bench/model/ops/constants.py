"""Constants of the operator model, each with its provenance, and the fixed (not fitted) ones.

Every constant is a `Constant`: its value, a tag saying how it was obtained, the source (calibration
files it was fitted on, a datasheet or paper, or the reasoning behind an assumption) and a date:

* ``measured-fit``: fitted by `lamina-bench validate --calibrate` on the named calibration files only;
* ``spec``: copied from a datasheet, a paper's reported figures or a library's source code;
* ``assumed``: a stated assumption with its reasoning (no measurement in the calibration set pins it);
* ``derived``: another GPU's constant applied to this one (time terms then scale with this GPU's
  datasheet peaks).

The fitted constants live in the calibration file (calibration.py); the fixed ones are below.
"""

from __future__ import annotations

from dataclasses import dataclass

TAGS = ("measured-fit", "spec", "assumed", "derived")


@dataclass(frozen=True)
class Constant:
    value: float
    tag: str
    source: str
    date: str

    def __post_init__(self) -> None:
        if self.tag not in TAGS:
            raise ValueError(f"constant tag must be one of {TAGS}, got {self.tag!r}")

    def derived_from(self, parent: str) -> Constant:
        """This constant carried over to another GPU (its peaks then apply)."""
        return Constant(self.value, "derived", f"{parent}'s {self.tag} constant ({self.source})", self.date)

    def to_dict(self) -> dict:
        return {"value": self.value, "tag": self.tag, "source": self.source, "date": self.date}

    @classmethod
    def from_dict(cls, data: dict) -> Constant:
        return cls(float(data["value"]), str(data["tag"]), str(data["source"]), str(data["date"]))


# ---- fixed constants (not fitted) -------------------------------------------------------------------

# GEMM CTA tile. cuBLAS/CUTLASS decode-shaped kernels use M tiles of 64 rows (one Hopper wgmma is
# 64 x N; Ampere mma.sync kernels for skinny M use 64-row CTA tiles) and N tiles of 128 columns; a
# GEMM computes whole tiles, so m = 65 costs as much as m = 128 and n = 1100 as n = 1152.
GEMM_TILE_M = Constant(
    64, "assumed", "Hopper wgmma M = 64; CUTLASS/cuBLAS skinny-M CTA tiles are 64 rows", "2026-07"
)
GEMM_TILE_N = Constant(128, "assumed", "common cuBLAS/CUTLASS CTA tile width for bf16 GEMMs", "2026-07")

# NCCL protocols: LL stores 4 bytes of data with a 4-byte flag (half the link bandwidth), LL128 uses
# 120 of every 128 bytes; Simple uses the full bandwidth (NCCL's protocol design, src/device/prims_*.h).
PROTOCOL_BW_FRACTION = {
    "LL": Constant(
        0.5, "spec", "NCCL LL protocol: 8-byte lines carry 4 bytes of data + a 4-byte flag", "2026-07"
    ),
    "LL128": Constant(120 / 128, "spec", "NCCL LL128 protocol: 120 data bytes per 128-byte line", "2026-07"),
    "Simple": Constant(1.0, "spec", "NCCL Simple protocol: full payload per transfer", "2026-07"),
}

# vLLM's custom all-reduce (csrc/custom_all_reduce.cuh, vllm/distributed/device_communicators/
# custom_all_reduce.py): used below max_size = 8 MiB; 1-stage (every rank reads every peer's buffer)
# at world size 2, or world size <= 4 below 512 KiB, or <= 8 below 256 KiB; 2-stage (reduce-scatter +
# all-gather through peer memory) otherwise. Above the cut-off vLLM calls NCCL.
VLLM_CUSTOM_AR_MAX_BYTES = Constant(
    8 * 2**20, "spec", "vLLM CustomAllreduce(max_size=8192 * 1024)", "2026-07"
)

# Host cost of one eager kernel launch (PyTorch dispatch + cudaLaunchKernel). In eager mode a layer
# takes at least this per kernel, because the CPU cannot enqueue faster; CUDA graphs remove it. No
# calibration file times host launches (every file reports GPU time), so this is an assumption.
EAGER_LAUNCH_S = Constant(
    6e-6,
    "assumed",
    "PyTorch eager op dispatch + cudaLaunchKernel is 5-10 us per op on server CPUs",
    "2026-07",
)
# Sharpness of the L2 residency cliff (cache.py): a working set re-read call after call hits in the L2 while
# it fits and misses almost entirely once it does not, because LRU-like replacement under cyclic reuse
# evicts every line before its next use. The exponent only rounds the cliff (hit share 0.8 at 0.87 C,
# 0.2 at 1.15 C), so that a working set near the capacity is neither all in nor all out; its value is
# not fitted: the calibration sets sample working sets at factors of 2 apart, which cannot pin it.
L2_CLIFF = Constant(
    10, "assumed", "cyclic reuse under LRU-like replacement: all hits below the L2 size, nearly none above",
    "2026-12",
)  # fmt: skip
# Kernels in one paged decode-attention call: the KV-cache write of the new token and the attention
# kernel (split-KV variants add a combine kernel, folded into the fitted fixed cost).
ATTENTION_KERNELS = Constant(2, "assumed", "vLLM: reshape_and_cache + the attention kernel", "2026-07")

# The link between Lamina's compute and attention pools (arXiv 2405.01814 v2, as the paper's reported
# figures): round trip 33.0 us with its host-bypassed stack vs 66.6 us with NCCL; bandwidth 45.7 vs
# 35.5 GB/s. One-way latency = half the round trip. For other NICs the bandwidth scales with the line
# rate; the testbed's rate is taken as the catalog's 400 Gb/s per GPU (assumed: not stated in the
# figures we copied).
PAPER = "arXiv 2405.01814 v2, the paper's reported figures"
POOL_LINK = {
    "lamina": {
        "latency_s": Constant(33.0e-6 / 2, "spec", f"{PAPER}: 33.0 us round trip / 2", "2025"),
        "bandwidth": Constant(45.7e9, "spec", f"{PAPER}: 45.7 GB/s", "2025"),
    },
    "nccl": {
        "latency_s": Constant(66.6e-6 / 2, "spec", f"{PAPER}: 66.6 us round trip / 2", "2025"),
        "bandwidth": Constant(35.5e9, "spec", f"{PAPER}: 35.5 GB/s", "2025"),
    },
}
POOL_LINK_TESTBED_BW = Constant(
    400e9 / 8, "assumed", "the paper's NIC line rate taken as the catalog's 400 Gb/s per GPU", "2026-07"
)
POOL_STACKS = tuple(POOL_LINK)


def fixed_constants() -> dict[str, Constant]:
    """Every fixed constant by name (for `lamina-bench validate --constants` and the docs)."""
    out = {
        "gemm.tile_m": GEMM_TILE_M,
        "gemm.tile_n": GEMM_TILE_N,
        "mode.eager_launch_s": EAGER_LAUNCH_S,
        "attention.kernels": ATTENTION_KERNELS,
        "l2.cliff": L2_CLIFF,
        "allreduce.vllm_custom_max_bytes": VLLM_CUSTOM_AR_MAX_BYTES,
        "pool_link.testbed_bw": POOL_LINK_TESTBED_BW,
    }
    out |= {f"allreduce.bw_fraction.{p}": c for p, c in PROTOCOL_BW_FRACTION.items()}
    for stack, values in POOL_LINK.items():
        out |= {f"pool_link.{stack}.{k}": c for k, c in values.items()}
    return out
