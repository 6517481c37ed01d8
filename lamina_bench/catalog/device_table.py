"""The built-in device table: one dict per device, every value with its source and date.

"spec_src" is the source of every spec value unless a "<field>_src" key names another one. Units: flop/s,
bytes, bytes/s, W, Gb/s. Prices are not here: they come from one named price set (catalog/prices.py).
`sm_count`, `l2_bytes` (last-level on-chip cache) and `boost_clock_hz` (maximum SM clock) are read by the GPU
operator model only (model/ops/hardware.py), not DeviceSpec fields. Cache capacities are binary: NVIDIA's
"50 MB" L2 is 50 x 2**20 bytes.
"""

from __future__ import annotations

_NV_H100 = "NVIDIA H100 datasheet table (archive-lib.hpctech.co.jp/gpuproduct/nvidia-h100.html); 2022-11"
_LAMINA = "Lamina paper Table 1, arXiv 2405.01814 v2; 2024-25"
_AWS_P5_NIC = "AWS p5: 3,200 Gb/s EFA / 8 GPUs; 2023-07"
_PCIE4 = "PCIe Gen4 x16: 64 GB/s bidirectional / 2, PCI-SIG PCIe 4.0 spec; 2017"
_SM_H100 = "NVIDIA H100 datasheet table, SMs 132 (SXM) / 114 (PCIe) (archive-lib.hpctech.co.jp/gpuproduct/nvidia-h100.html); 2022-11"
_L2_HOPPER = "NVIDIA H100 datasheet table, L2 Cache Size 50 MB (SXM and PCIe) (archive-lib.hpctech.co.jp/gpuproduct/nvidia-h100.html); 2022-11"
_CLOCK_H100 = "NVIDIA's final H100 specifications: GPU boost 1.98 GHz (SXM5) / 1.75 GHz (PCIe) (prohardver.hu/hir/nvidia_reszletezte_h100_gyorsitok_specifikacio.html); 2022"
_CLOCK_A100 = "A100 SXM4: boost clock 1410 MHz (techpowerup.com/gpu-specs/a100-sxm4-40-gb.c3506); 2020"
_L2_A100 = "NVIDIA A100 whitepaper figure as quoted in NVIDIA Technical Blog 'NVIDIA Hopper Architecture In-Depth' (A100 40 MB L2); 2022-03"
_L2_GA102 = (
    "NVIDIA Ampere GA102 whitepaper: 6144 KB L2 (512 KB per 32-bit memory controller, 12 controllers); 2020"
)

BUILTIN: list[dict] = [
    dict(
        name="H100", full_name="NVIDIA H100 SXM5 80GB", vendor="NVIDIA",
        bf16_flops_per_s=989e12, memory_bytes=80e9, mem_bandwidth_bytes_per_s=3.35e12, power_w=700,
        intra_link_bytes_per_s=450e9, nic_gbps=400,
        spec_src=f"{_LAMINA}; {_NV_H100}",
        intra_link_bytes_per_s_src="NVLink4 900 GB/s bidirectional / 2, NVIDIA H100 datasheet; 2022-11",
        sm_count=132, sm_count_src=_SM_H100,
        l2_bytes=50 * 2**20, l2_bytes_src=_L2_HOPPER,
        boost_clock_hz=1.98e9, boost_clock_hz_src=_CLOCK_H100,
    ),
    dict(
        name="H100-PCIe", full_name="NVIDIA H100 PCIe 80GB", vendor="NVIDIA",
        bf16_flops_per_s=756e12, memory_bytes=80e9, mem_bandwidth_bytes_per_s=2.0e12, power_w=350,
        intra_link_bytes_per_s=64e9, nic_gbps=None,
        spec_src="NVIDIA H100 PCIe product brief PB-11133-001 v02; 2022-11",
        intra_link_bytes_per_s_src="PCIe Gen5 x16: 128 GB/s bidirectional / 2, PCI-SIG PCIe 5.0 spec; 2019",
        sm_count=114, sm_count_src=_SM_H100,
        l2_bytes=50 * 2**20,
        l2_bytes_src="H100 PCIe: 114 SMs, 50 MB of L2 enabled (Chips and Cheese, 'Nvidia's H100: Funny L2, and Tons of Bandwidth'); 2023-07",
        boost_clock_hz=1.755e9, boost_clock_hz_src=_CLOCK_H100,
    ),
    dict(
        name="H200", full_name="NVIDIA H200 SXM 141GB", vendor="NVIDIA",
        bf16_flops_per_s=989e12, memory_bytes=141e9, mem_bandwidth_bytes_per_s=4.8e12, power_w=700,
        intra_link_bytes_per_s=450e9, nic_gbps=400,
        spec_src="NVIDIA H200 datasheet figures (saulelectric.com/nvidia-h200.html); 2024",
        intra_link_bytes_per_s_src="NVLink4 900 GB/s bidirectional / 2, NVIDIA H200 datasheet; 2024",
        nic_gbps_src="AWS p5e/p5en: 3,200 Gb/s EFA / 8 GPUs (uncertain); 2024",
        sm_count=132, sm_count_src="H200 specification, SMs 132 (saulelectric.com/nvidia-h200.html); 2024",
        l2_bytes=50 * 2**20,
        l2_bytes_src=f"the H100 SXM's (same GH100 configuration, 132 SMs; assumed): {_L2_HOPPER}",
        boost_clock_hz=1.98e9,
        boost_clock_hz_src=f"the H100 SXM's (same GH100 configuration; assumed): {_CLOCK_H100}",
    ),
    dict(
        name="H20", full_name="NVIDIA H20 96GB", vendor="NVIDIA",
        bf16_flops_per_s=148e12, memory_bytes=96e9, mem_bandwidth_bytes_per_s=4.0e12, power_w=400,
        intra_link_bytes_per_s=450e9, nic_gbps=400,
        spec_src=f"{_LAMINA}; tweaktown.com/news/95224; 2024",
        intra_link_bytes_per_s_src="NVLink 900 GB/s bidirectional / 2 (tweaktown.com/news/95224); 2024",
        sm_count=78, sm_count_src="78 SMs as reported by Geekbench 6 (zangshuxian.com/new/674733024499207168, uncertain); 2024",
    ),
    dict(
        name="H800", full_name="NVIDIA H800 SXM 80GB", vendor="NVIDIA",
        bf16_flops_per_s=989e12, memory_bytes=80e9, mem_bandwidth_bytes_per_s=3.35e12, power_w=700,
        intra_link_bytes_per_s=200e9, nic_gbps=400,
        spec_src="github citsjtu2020/LLM-Prof hardware_spec.md (H800 = H100 SXM compute); 2024",
        intra_link_bytes_per_s_src="NVLink 400 GB/s bidirectional / 2 (LLM-Prof hardware_spec.md); 2024",
        nic_gbps_src="DeepSeek-V3 cluster, one 400 Gb/s IB NIC per GPU, arXiv 2412.19437; 2024-12",
        l2_bytes=50 * 2**20,
        l2_bytes_src=f"the H100 SXM's (H800 = H100 SXM compute, NVLink cut; assumed): {_L2_HOPPER}",
    ),
    dict(
        name="A100-80G", full_name="NVIDIA A100 SXM4 80GB", vendor="NVIDIA",
        bf16_flops_per_s=312e12, memory_bytes=80e9, mem_bandwidth_bytes_per_s=2.039e12, power_w=400,
        intra_link_bytes_per_s=300e9, nic_gbps=50,
        spec_src="NVIDIA A100 datasheet (github calculon-ai/calculon systems/a100_80g.json); 2021",
        intra_link_bytes_per_s_src="NVLink3 600 GB/s bidirectional / 2, NVIDIA A100 datasheet; 2021",
        nic_gbps_src="AWS p4de: 400 Gb/s EFA / 8 GPUs; 2022",
        sm_count=108, sm_count_src="A100 80GB: 108 SMs (notes.haroldbenoit.com/ML/Engineering/GPUs/Hardware); 2021",
        l2_bytes=40 * 2**20, l2_bytes_src=_L2_A100,
        boost_clock_hz=1.41e9, boost_clock_hz_src=_CLOCK_A100,
    ),
    dict(
        name="A100-40G", full_name="NVIDIA A100 SXM4 40GB", vendor="NVIDIA",
        bf16_flops_per_s=312e12, memory_bytes=40e9, mem_bandwidth_bytes_per_s=1.555e12, power_w=400,
        intra_link_bytes_per_s=300e9, nic_gbps=50,
        spec_src="NVIDIA A100 datasheet (github winston-zhang/gpu-specs specs.md); 2020",
        intra_link_bytes_per_s_src="NVLink3 600 GB/s bidirectional / 2, NVIDIA A100 datasheet; 2020",
        nic_gbps_src="AWS p4d: 400 Gb/s EFA / 8 GPUs; 2020",
        sm_count=108, sm_count_src="A100: 108 SMs, same GA100 configuration as the 80GB part (notes.haroldbenoit.com/ML/Engineering/GPUs/Hardware); 2020",
        l2_bytes=40 * 2**20, l2_bytes_src=_L2_A100,
        boost_clock_hz=1.41e9, boost_clock_hz_src=_CLOCK_A100,
    ),
    dict(
        name="A40", full_name="NVIDIA A40 48GB", vendor="NVIDIA",
        bf16_flops_per_s=149.7e12, memory_bytes=48e9, mem_bandwidth_bytes_per_s=0.696e12, power_w=300,
        intra_link_bytes_per_s=32e9, nic_gbps=None,
        spec_src="NVIDIA A40 datasheet figures: 48 GB GDDR6, 696 GB/s, 300 W (relationship-nepal.org "
        "900-2g133-0000-000 product sheet); BF16 tensor 149.7 TFLOPS dense (hmc-tech.com nvidia-a100-vs-nvidia-a40); 2020-10",
        intra_link_bytes_per_s_src=_PCIE4,
        sm_count=84, sm_count_src="A40 (GA102): 84 SMs (elprocus.com/nvidia-a40-gpu); 2020-10",
        l2_bytes=6 * 2**20, l2_bytes_src=_L2_GA102,
        boost_clock_hz=1.74e9, boost_clock_hz_src="A40: boost clock 1740 MHz (hmc-tech.com/gpu/nvidia-a100-vs-nvidia-a40); 2020-10",
    ),
    dict(
        name="L40S", full_name="NVIDIA L40S 48GB", vendor="NVIDIA",
        bf16_flops_per_s=362e12, memory_bytes=48e9, mem_bandwidth_bytes_per_s=0.864e12, power_w=350,
        intra_link_bytes_per_s=32e9, nic_gbps=50,
        spec_src="NVIDIA L40S datasheet table (mullet.se product 355414); 2023",
        intra_link_bytes_per_s_src=_PCIE4,
        nic_gbps_src="AWS g6e.48xlarge: 400 Gb/s / 8 GPUs (uncertain); 2024",
        sm_count=142, sm_count_src="L40S: 142 SMs (computizer.com nvidia-l40s-48gb product page, TechPowerUp figures); 2022-10",
        l2_bytes=96 * 2**20,
        l2_bytes_src="96 MiB measured on the L40 (same AD102 configuration: 142 SMs, 384-bit GDDR6), arXiv 2606.22588 "
        "'Non-Uniform L2 Cache Latency Across the Streaming Multiprocessors of an NVIDIA L40'; the AD102 die has 96 MB "
        "(16 MB per 64-bit controller). TechPowerUp's L40S page lists 48 MB: uncertain; 2026-06",
        boost_clock_hz=2.52e9,
        boost_clock_hz_src="L40S: boost clock 2520 MHz (computizer.com nvidia-l40s-48gb product page, TechPowerUp figures); 2022-10",
    ),
    dict(
        name="L20", full_name="NVIDIA L20 48GB", vendor="NVIDIA",
        bf16_flops_per_s=119.5e12, memory_bytes=48e9, mem_bandwidth_bytes_per_s=0.864e12, power_w=275,
        intra_link_bytes_per_s=32e9, nic_gbps=None,
        spec_src="github citsjtu2020/LLM-Prof hardware_spec.md (FP16 119.5 TFLOPS, uncertain); 2024",
        intra_link_bytes_per_s_src=_PCIE4,
    ),
    dict(
        name="L4", full_name="NVIDIA L4 24GB", vendor="NVIDIA",
        bf16_flops_per_s=121e12, memory_bytes=24e9, mem_bandwidth_bytes_per_s=0.300e12, power_w=72,
        intra_link_bytes_per_s=32e9, nic_gbps=None,
        spec_src="NVIDIA L4 datasheet figures (grokipedia.com/page/NVIDIA_L4_vs_L40S); 2023",
        intra_link_bytes_per_s_src=_PCIE4,
    ),
    dict(
        name="RTX4090", full_name="NVIDIA GeForce RTX 4090 24GB", vendor="NVIDIA",
        bf16_flops_per_s=165e12, memory_bytes=24e9, mem_bandwidth_bytes_per_s=1.008e12, power_w=450,
        intra_link_bytes_per_s=32e9, nic_gbps=None,
        spec_src="NVIDIA Ada whitepaper figures, BF16 with FP32 accumulate (waredb.com rtx-4090); 2022-10",
        intra_link_bytes_per_s_src=_PCIE4,
    ),
    dict(
        name="A10", full_name="NVIDIA A10 24GB", vendor="NVIDIA",
        bf16_flops_per_s=125e12, memory_bytes=24e9, mem_bandwidth_bytes_per_s=0.600e12, power_w=150,
        intra_link_bytes_per_s=32e9, nic_gbps=None,
        spec_src="NVIDIA A10 datasheet (github winston-zhang/gpu-specs specs.md); 2021",
        intra_link_bytes_per_s_src=_PCIE4,
    ),
    dict(
        name="B200", full_name="NVIDIA B200 (HGX, 1000 W)", vendor="NVIDIA",
        bf16_flops_per_s=2250e12, memory_bytes=180e9, mem_bandwidth_bytes_per_s=8.0e12, power_w=1000,
        intra_link_bytes_per_s=900e9, nic_gbps=400,
        spec_src="glennklockwood.com/garden/processors/B200 (180 GB usable of 192 physical); 2025",
        intra_link_bytes_per_s_src="NVLink5 1,800 GB/s bidirectional / 2; 2025",
        nic_gbps_src="HGX B200 node 8x400G NICs (uncertain); 2025",
        sm_count=148, sm_count_src="B200: 2 dies x 74 enabled SMs = 148 (Chips and Cheese, 'Nvidia\'s B200: Keeping the CUDA Juggernaut Rolling'); 2025-12",
        l2_bytes=126 * 2**20,
        l2_bytes_src="B200: 126 MB L2 split over the two dies (Chips and Cheese, 'Nvidia\'s B200: Keeping the CUDA Juggernaut "
        "Rolling'); some spec summaries give ~96 MB: uncertain; 2025-12",
    ),
    dict(
        name="MI300X", full_name="AMD Instinct MI300X 192GB", vendor="AMD",
        bf16_flops_per_s=1307e12, memory_bytes=192e9, mem_bandwidth_bytes_per_s=5.3e12, power_w=750,
        intra_link_bytes_per_s=448e9, nic_gbps=400,
        spec_src="AMD MI300X datasheet figures (gpu.blog instinct-mi300x); 2023-12",
        intra_link_bytes_per_s_src="7 Infinity Fabric links x 128 GB/s bidirectional / 2 "
        "(wheelersnetwork.com 2024/01); 2024-01",
        nic_gbps_src="Azure ND MI300X v5: 8x400G (uncertain); 2024",
    ),
    dict(
        name="TPU-v6e", full_name="Google TPU v6e (Trillium)", vendor="Google",
        bf16_flops_per_s=918e12, memory_bytes=32e9, mem_bandwidth_bytes_per_s=1.638e12, power_w=None,
        intra_link_bytes_per_s=400e9, nic_gbps=None,
        spec_src="cloud.google.com/tpu/docs/v6e; 2024-25",
        intra_link_bytes_per_s_src="ICI 800 GB/s bidirectional per chip / 2, cloud.google.com/tpu/docs/v6e; 2024",
    ),
]  # fmt: skip
