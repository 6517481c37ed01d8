"""Device catalog: specs and prices, each with its source and date; local device detection.

Specs are dense (no sparsity) BF16 tensor throughput, memory, memory bandwidth, board power, intra-node
link bandwidth per direction and the cloud NIC per device. A value nobody published stays None and is
shown as "n/a"; it is never guessed. Starting values: /work/shared/data/devices.md (sources and dates)
and the Lamina paper's Table 1 (arXiv 2405.01814 v2).

Prices are on-demand, per device-hour, one documented source per device. H100 and H20 use the paper's
numbers so its experiments reproduce ($11.06 = GCP a3-highgpu-1g list; $4.63 = the authors' estimate,
H20 has no public cloud price). Providers and dates differ between devices, so compare with care and
override them with a user TOML file (see `load_catalog`) when you have your own prices.
"""

from __future__ import annotations

import datetime
import functools
import os
import platform
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType

from lamina_bench.errors import UserInputError

ENV_DEVICES_FILE = "LAMINA_BENCH_DEVICES"  # path of a user TOML file merged over the built-in table

# Numeric fields that carry a source when not None (units in the names).
_VALUE_FIELDS = (
    "bf16_flops_per_s",
    "memory_bytes",
    "mem_bandwidth_bytes_per_s",
    "power_w",
    "intra_link_bytes_per_s",
    "nic_gbps",
    "usd_per_hour",
)
_TEXT_FIELDS = ("full_name", "vendor")


@dataclass(frozen=True)
class DeviceSpec:
    """One accelerator (or the local CPU). None = unknown, shown as "n/a"."""

    name: str  # catalog key, e.g. "H100"
    full_name: str
    vendor: str
    bf16_flops_per_s: float | None  # dense tensor-core peak, no sparsity
    memory_bytes: float
    mem_bandwidth_bytes_per_s: float | None
    power_w: float | None  # board power (TDP)
    intra_link_bytes_per_s: float | None  # per direction (NVLink / PCIe / Infinity Fabric / ICI)
    nic_gbps: float | None  # scale-out network per device, gigabits/s
    usd_per_hour: float | None  # on-demand rental price per device-hour
    # field -> "source; date"; left out of the hash (a mapping is unhashable) but compared by ==
    sources: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.name or any(c.isspace() for c in self.name):
            raise UserInputError(f"device name {self.name!r} must be non-empty without spaces")
        if self.memory_bytes is None:
            raise UserInputError(f"device {self.name}: memory_bytes is required")
        for name in _VALUE_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise UserInputError(f"device {self.name}: {name} must be a positive number, got {value!r}")
            if not self.sources.get(name):
                raise UserInputError(f"device {self.name}: {name} = {value} has no source")
        # Freeze the mapping so the frozen dataclass cannot be changed through it.
        object.__setattr__(self, "sources", MappingProxyType(dict(self.sources)))


# ---- built-in table ---------------------------------------------------------------------------------
# One dict per device. "spec_src" is the source of every spec value unless a "<field>_src" key names
# another one; "price_src" is the price's source. Units: flop/s, bytes, bytes/s, W, Gb/s, USD/h.

_NV_H100 = "NVIDIA H100 datasheet table (archive-lib.hpctech.co.jp/gpuproduct/nvidia-h100.html); 2022-11"
_LAMINA = "Lamina paper Table 1, arXiv 2405.01814 v2; 2024-25"
_AWS_P5_NIC = "AWS p5: 3,200 Gb/s EFA / 8 GPUs; 2023-07"
_PCIE4 = "PCIe Gen4 x16: 64 GB/s bidirectional / 2, PCI-SIG PCIe 4.0 spec; 2017"

_BUILTIN: list[dict] = [
    dict(
        name="H100", full_name="NVIDIA H100 SXM5 80GB", vendor="NVIDIA",
        bf16_flops_per_s=989e12, memory_bytes=80e9, mem_bandwidth_bytes_per_s=3.35e12, power_w=700,
        intra_link_bytes_per_s=450e9, nic_gbps=400, usd_per_hour=11.06,
        spec_src=f"{_LAMINA}; {_NV_H100}",
        intra_link_bytes_per_s_src="NVLink4 900 GB/s bidirectional / 2, NVIDIA H100 datasheet; 2022-11",
        price_src="GCP a3-highgpu-1g on-demand list $11.0612/h, as used in Lamina paper Table 1; 2024-25",
    ),
    dict(
        name="H100-PCIe", full_name="NVIDIA H100 PCIe 80GB", vendor="NVIDIA",
        bf16_flops_per_s=756e12, memory_bytes=80e9, mem_bandwidth_bytes_per_s=2.0e12, power_w=350,
        intra_link_bytes_per_s=64e9, nic_gbps=None, usd_per_hour=2.86,
        spec_src="NVIDIA H100 PCIe product brief PB-11133-001 v02; 2022-11",
        intra_link_bytes_per_s_src="PCIe Gen5 x16: 128 GB/s bidirectional / 2, PCI-SIG PCIe 5.0 spec; 2019",
        price_src="Lambda on-demand 1x H100 PCIe (techbytes.app serverless-gpu-pricing-matrix); 2026-05-07",
    ),
    dict(
        name="H200", full_name="NVIDIA H200 SXM 141GB", vendor="NVIDIA",
        bf16_flops_per_s=989e12, memory_bytes=141e9, mem_bandwidth_bytes_per_s=4.8e12, power_w=700,
        intra_link_bytes_per_s=450e9, nic_gbps=400, usd_per_hour=10.60,
        spec_src="NVIDIA H200 datasheet figures (saulelectric.com/nvidia-h200.html); 2024",
        intra_link_bytes_per_s_src="NVLink4 900 GB/s bidirectional / 2, NVIDIA H200 datasheet; 2024",
        nic_gbps_src="AWS p5e/p5en: 3,200 Gb/s EFA / 8 GPUs (uncertain); 2024",
        price_src="GCP a3-ultragpu-8g on-demand $84.81/h / 8 (uncertain, from a public code catalog); 2025",
    ),
    dict(
        name="H20", full_name="NVIDIA H20 96GB", vendor="NVIDIA",
        bf16_flops_per_s=148e12, memory_bytes=96e9, mem_bandwidth_bytes_per_s=4.0e12, power_w=400,
        intra_link_bytes_per_s=450e9, nic_gbps=400, usd_per_hour=4.63,
        spec_src=f"{_LAMINA}; tweaktown.com/news/95224; 2024",
        intra_link_bytes_per_s_src="NVLink 900 GB/s bidirectional / 2 (tweaktown.com/news/95224); 2024",
        price_src="Lamina paper Table 1, the authors' estimate (no public cloud price), arXiv 2405.01814 v2; 2024-25",
    ),
    dict(
        name="H800", full_name="NVIDIA H800 SXM 80GB", vendor="NVIDIA",
        bf16_flops_per_s=989e12, memory_bytes=80e9, mem_bandwidth_bytes_per_s=3.35e12, power_w=700,
        intra_link_bytes_per_s=200e9, nic_gbps=400, usd_per_hour=2.00,
        spec_src="github citsjtu2020/LLM-Prof hardware_spec.md (H800 = H100 SXM compute); 2024",
        intra_link_bytes_per_s_src="NVLink 400 GB/s bidirectional / 2 (LLM-Prof hardware_spec.md); 2024",
        nic_gbps_src="DeepSeek-V3 cluster, one 400 Gb/s IB NIC per GPU, arXiv 2412.19437; 2024-12",
        price_src="DeepSeek-V3 report's assumed rental price, arXiv 2412.19437 (not a cloud list); 2024-12",
    ),
    dict(
        name="A100-80G", full_name="NVIDIA A100 SXM4 80GB", vendor="NVIDIA",
        bf16_flops_per_s=312e12, memory_bytes=80e9, mem_bandwidth_bytes_per_s=2.039e12, power_w=400,
        intra_link_bytes_per_s=300e9, nic_gbps=50, usd_per_hour=5.07,
        spec_src="NVIDIA A100 datasheet (github calculon-ai/calculon systems/a100_80g.json); 2021",
        intra_link_bytes_per_s_src="NVLink3 600 GB/s bidirectional / 2, NVIDIA A100 datasheet; 2021",
        nic_gbps_src="AWS p4de: 400 Gb/s EFA / 8 GPUs; 2022",
        price_src="GCP a2-ultragpu-1g on-demand list (from a public code catalog); 2024-25",
    ),
    dict(
        name="A100-40G", full_name="NVIDIA A100 SXM4 40GB", vendor="NVIDIA",
        bf16_flops_per_s=312e12, memory_bytes=40e9, mem_bandwidth_bytes_per_s=1.555e12, power_w=400,
        intra_link_bytes_per_s=300e9, nic_gbps=50, usd_per_hour=3.67,
        spec_src="NVIDIA A100 datasheet (github winston-zhang/gpu-specs specs.md); 2020",
        intra_link_bytes_per_s_src="NVLink3 600 GB/s bidirectional / 2, NVIDIA A100 datasheet; 2020",
        nic_gbps_src="AWS p4d: 400 Gb/s EFA / 8 GPUs; 2020",
        price_src="GCP a2-highgpu-1g on-demand list $3.673/h; 2024",
    ),
    dict(
        name="L40S", full_name="NVIDIA L40S 48GB", vendor="NVIDIA",
        bf16_flops_per_s=362e12, memory_bytes=48e9, mem_bandwidth_bytes_per_s=0.864e12, power_w=350,
        intra_link_bytes_per_s=32e9, nic_gbps=50, usd_per_hour=1.861,
        spec_src="NVIDIA L40S datasheet table (mullet.se product 355414); 2023",
        intra_link_bytes_per_s_src=_PCIE4,
        nic_gbps_src="AWS g6e.48xlarge: 400 Gb/s / 8 GPUs (uncertain); 2024",
        price_src="AWS g6e.xlarge on-demand us-east-1 (modal.com/blog/nvidia-l40s-price-article); 2025-08-12",
    ),
    dict(
        name="L20", full_name="NVIDIA L20 48GB", vendor="NVIDIA",
        bf16_flops_per_s=119.5e12, memory_bytes=48e9, mem_bandwidth_bytes_per_s=0.864e12, power_w=275,
        intra_link_bytes_per_s=32e9, nic_gbps=None, usd_per_hour=None,
        spec_src="github citsjtu2020/LLM-Prof hardware_spec.md (FP16 119.5 TFLOPS, uncertain); 2024",
        intra_link_bytes_per_s_src=_PCIE4,
    ),
    dict(
        name="L4", full_name="NVIDIA L4 24GB", vendor="NVIDIA",
        bf16_flops_per_s=121e12, memory_bytes=24e9, mem_bandwidth_bytes_per_s=0.300e12, power_w=72,
        intra_link_bytes_per_s=32e9, nic_gbps=None, usd_per_hour=0.70,
        spec_src="NVIDIA L4 datasheet figures (grokipedia.com/page/NVIDIA_L4_vs_L40S); 2023",
        intra_link_bytes_per_s_src=_PCIE4,
        price_src="GCP g2-standard-4 (1x L4) on-demand list; 2024-26",
    ),
    dict(
        name="RTX4090", full_name="NVIDIA GeForce RTX 4090 24GB", vendor="NVIDIA",
        bf16_flops_per_s=165e12, memory_bytes=24e9, mem_bandwidth_bytes_per_s=1.008e12, power_w=450,
        intra_link_bytes_per_s=32e9, nic_gbps=None, usd_per_hour=0.34,
        spec_src="NVIDIA Ada whitepaper figures, BF16 with FP32 accumulate (waredb.com rtx-4090); 2022-10",
        intra_link_bytes_per_s_src=_PCIE4,
        price_src="RunPod community pod (deploybase.ai/articles/rtx-4090-cloud); 2026-03",
    ),
    dict(
        name="A10", full_name="NVIDIA A10 24GB", vendor="NVIDIA",
        bf16_flops_per_s=125e12, memory_bytes=24e9, mem_bandwidth_bytes_per_s=0.600e12, power_w=150,
        intra_link_bytes_per_s=32e9, nic_gbps=None, usd_per_hour=0.86,
        spec_src="NVIDIA A10 datasheet (github winston-zhang/gpu-specs specs.md); 2021",
        intra_link_bytes_per_s_src=_PCIE4,
        price_src="Lambda on-demand 1x A10 (techbytes.app serverless-gpu-pricing-matrix); 2026-05-07",
    ),
    dict(
        name="B200", full_name="NVIDIA B200 (HGX, 1000 W)", vendor="NVIDIA",
        bf16_flops_per_s=2250e12, memory_bytes=180e9, mem_bandwidth_bytes_per_s=8.0e12, power_w=1000,
        intra_link_bytes_per_s=900e9, nic_gbps=400, usd_per_hour=5.98,
        spec_src="glennklockwood.com/garden/processors/B200 (180 GB usable of 192 physical); 2025",
        intra_link_bytes_per_s_src="NVLink5 1,800 GB/s bidirectional / 2; 2025",
        nic_gbps_src="HGX B200 node 8x400G NICs (uncertain); 2025",
        price_src="RunPod pod on-demand (deploybase.ai/articles/b200-vs-h200-vs-h100); 2026-03",
    ),
    dict(
        name="MI300X", full_name="AMD Instinct MI300X 192GB", vendor="AMD",
        bf16_flops_per_s=1307e12, memory_bytes=192e9, mem_bandwidth_bytes_per_s=5.3e12, power_w=750,
        intra_link_bytes_per_s=448e9, nic_gbps=400, usd_per_hour=1.85,
        spec_src="AMD MI300X datasheet figures (gpu.blog instinct-mi300x); 2023-12",
        intra_link_bytes_per_s_src="7 Infinity Fabric links x 128 GB/s bidirectional / 2 "
        "(wheelersnetwork.com 2024/01); 2024-01",
        nic_gbps_src="Azure ND MI300X v5: 8x400G (uncertain); 2024",
        price_src="Vultr on-demand (cliffcenter.com/research/amd-inference-economics); 2026-05-18",
    ),
    dict(
        name="TPU-v6e", full_name="Google TPU v6e (Trillium)", vendor="Google",
        bf16_flops_per_s=918e12, memory_bytes=32e9, mem_bandwidth_bytes_per_s=1.638e12, power_w=None,
        intra_link_bytes_per_s=400e9, nic_gbps=None, usd_per_hour=2.70,
        spec_src="cloud.google.com/tpu/docs/v6e; 2024-25",
        intra_link_bytes_per_s_src="ICI 800 GB/s bidirectional per chip / 2, cloud.google.com/tpu/docs/v6e; 2024",
        price_src=f"GCP on-demand per chip, as in {_LAMINA}",
    ),
]  # fmt: skip


def _builtin_spec(row: dict) -> DeviceSpec:
    """A DeviceSpec from one _BUILTIN row, every non-None value sourced."""
    sources = {}
    for name in _VALUE_FIELDS:
        if row.get(name) is None:
            continue
        default = row["price_src"] if name == "usd_per_hour" else row["spec_src"]
        sources[name] = row.get(f"{name}_src", default)
    values = {f.name: row.get(f.name) for f in fields(DeviceSpec) if f.name != "sources"}
    values |= {name: float(row[name]) for name in _VALUE_FIELDS if row.get(name) is not None}
    return DeviceSpec(**values, sources=sources)


# ---- local host -------------------------------------------------------------------------------------


def _today() -> str:
    return datetime.date.today().isoformat()


def _cpu_info() -> tuple[str, str]:
    """(model name, vendor) of the local CPU from /proc/cpuinfo, else from `platform`."""
    model, vendor = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not model:
                model = value.strip()
            elif key == "vendor_id" and not vendor:
                vendor = value.strip()
    except OSError:
        pass
    vendors = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD"}
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    return model, vendors.get(vendor, vendor or "unknown")


def _host_memory() -> tuple[float, str]:
    """(bytes, source) of the host's physical memory: /proc/meminfo MemTotal, else os.sysconf."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                kib = int(line.split()[1])  # the "kB" of /proc/meminfo is 1024 bytes
                return float(kib * 1024), f"/proc/meminfo MemTotal; read {_today()}"
    except (OSError, ValueError, IndexError):
        pass
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return float(pages), f"os.sysconf(SC_PHYS_PAGES * SC_PAGE_SIZE); read {_today()}"


@functools.lru_cache(maxsize=1)
def local_cpu() -> DeviceSpec:
    """The local host CPU; flops and bandwidth are unknown (None = "n/a"), never guessed."""
    model, vendor = _cpu_info()
    memory, source = _host_memory()
    return DeviceSpec(
        name="CPU", full_name=model, vendor=vendor, bf16_flops_per_s=None, memory_bytes=memory,
        mem_bandwidth_bytes_per_s=None, power_w=None, intra_link_bytes_per_s=None, nic_gbps=None,
        usd_per_hour=None, sources={"memory_bytes": source},
    )  # fmt: skip


# ---- user file --------------------------------------------------------------------------------------


def _check_user_value(path: Path, device: str, key: str, value: object) -> None:
    """Raise UserInputError unless `value` has the right type for field `key`."""
    valid = ", ".join(_TEXT_FIELDS + _VALUE_FIELDS + ("source",))
    where = f"{path}: devices.{device}.{key}"
    if key in _TEXT_FIELDS or key == "source":
        if not isinstance(value, str):
            raise UserInputError(f"{where} must be a string, got {value!r}")
    elif key in _VALUE_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise UserInputError(f"{where} must be a positive number, got {value!r}")
    else:
        raise UserInputError(f"{where}: unknown field {key!r}; valid: {valid}")


def _read_user_file(path: Path) -> dict[str, dict]:
    """The [devices.NAME] tables of a user TOML file, type-checked."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise UserInputError(f"cannot read device file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserInputError(f"device file {path} is not valid TOML: {exc}") from None
    extra = set(data) - {"devices"}
    if extra or not isinstance(data.get("devices", {}), dict):
        raise UserInputError(
            f"device file {path}: only [devices.NAME] tables are allowed, got {sorted(data)}"
        )
    tables = data.get("devices", {})
    for device, table in tables.items():
        if not isinstance(table, dict):
            raise UserInputError(f"device file {path}: devices.{device} must be a table")
        for key, value in table.items():
            _check_user_value(path, device, key, value)
    return tables


def _apply_user_table(path: Path, name: str, table: dict, base: DeviceSpec | None) -> DeviceSpec:
    """`base` with the user's values (or a new device), each sourced to the user file."""
    source = f"user file {path}" + (f": {table['source']}" if "source" in table else "")
    values = {k: (float(v) if k in _VALUE_FIELDS else v) for k, v in table.items() if k != "source"}
    sourced = {k: source for k in values if k in _VALUE_FIELDS}
    if base is not None:
        return replace(base, **values, sources={**base.sources, **sourced})
    if "memory_bytes" not in values:
        raise UserInputError(f"{path}: new device devices.{name} needs memory_bytes")
    new = {k: None for k in _VALUE_FIELDS} | {"full_name": name, "vendor": "unknown"} | values
    return DeviceSpec(name=name, **new, sources=sourced)


def load_catalog(user_file: str | Path | None = None) -> dict[str, DeviceSpec]:
    """Built-in devices + "CPU" (this host) + an optional user TOML file, keyed by catalog name.

    The user file (argument, else env LAMINA_BENCH_DEVICES) holds [devices.NAME] tables; a table
    whose NAME matches a catalog device (case-insensitive) overrides the fields it sets, any other
    NAME adds a device (memory_bytes required). An optional `source = "..."` string is appended to
    the "user file <path>" source of that table's values.
    """
    catalog = {row["name"]: _builtin_spec(row) for row in _BUILTIN}
    catalog["CPU"] = local_cpu()
    if user_file is None:
        user_file = os.environ.get(ENV_DEVICES_FILE) or None
    if user_file is None:
        return catalog
    path = Path(user_file)
    for name, table in _read_user_file(path).items():
        key = _lookup(name, catalog) or name
        catalog[key] = _apply_user_table(path, key, table, catalog.get(key))
    return catalog


# ---- lookup -----------------------------------------------------------------------------------------

# Alternative spellings (after _norm) -> catalog name.
_ALIASES = {
    "h100sxm": "H100", "h100sxm5": "H100", "h10080g": "H100", "h10080gb": "H100",
    "h100pcie80g": "H100-PCIe", "h200sxm": "H200", "h2096g": "H20",
    "a10080gb": "A100-80G", "a100sxm480gb": "A100-80G", "a100sxm80g": "A100-80G",
    "a10040gb": "A100-40G", "a100sxm440gb": "A100-40G",
    "4090": "RTX4090", "geforcertx4090": "RTX4090",
    "mi300": "MI300X", "instinctmi300x": "MI300X",
    "v6e": "TPU-v6e", "trillium": "TPU-v6e", "tpuv6etrillium": "TPU-v6e",
    "b200sxm": "B200", "host": "CPU",
}  # fmt: skip


def _norm(name: str) -> str:
    """Lower case without separators: "A100-80G", "a100_80g" and "a100 80g" are the same key."""
    return re.sub(r"[\s_\-]", "", name.lower())


def _lookup(name: str, catalog: Mapping[str, DeviceSpec]) -> str | None:
    """The catalog key `name` refers to, or None."""
    by_norm = {_norm(key): key for key in catalog}
    key = _norm(name)
    if key in by_norm:
        return by_norm[key]
    alias = _ALIASES.get(key)
    return alias if alias in catalog else None


def get_device(name: str, catalog: Mapping[str, DeviceSpec] | None = None) -> DeviceSpec:
    """The device called `name` (case-insensitive; a few aliases such as "h100-sxm")."""
    catalog = load_catalog() if catalog is None else catalog
    key = _lookup(name, catalog) if isinstance(name, str) else None
    if key is None:
        raise UserInputError(f"unknown device {name!r}; valid: {', '.join(catalog)}")
    return catalog[key]


@dataclass(frozen=True)
class DeviceMix:
    """`count` identical devices, e.g. 2xH100."""

    count: int
    device: DeviceSpec

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise UserInputError(f"device count must be a positive int, got {self.count!r}")

    @property
    def cost_usd_per_hour(self) -> float | None:
        """Rental price of the whole mix; None when the device has no price."""
        price = self.device.usd_per_hour
        return None if price is None else self.count * price

    def __str__(self) -> str:
        return f"{self.count}x{self.device.name}"


_MIX = re.compile(r"^\s*(\d+)\s*[x×*]\s*(\S.*?)\s*$", re.IGNORECASE)


def parse_mix(text: str, catalog: Mapping[str, DeviceSpec] | None = None) -> DeviceMix:
    """A device mix from "NxDEVICE" ("2xH100", "4xH20", "1xA100-80G")."""
    match = _MIX.match(text) if isinstance(text, str) else None
    if match is None:
        raise UserInputError(f"bad device mix {text!r}; expected NxDEVICE, e.g. 2xH100 or 4xH20")
    count = int(match.group(1))
    if count < 1:
        raise UserInputError(f"bad device mix {text!r}: the count must be at least 1")
    return DeviceMix(count, get_device(match.group(2), catalog))


# ---- local accelerators -----------------------------------------------------------------------------

# torch.cuda.get_device_name patterns (after removing "NVIDIA", "GeForce", "AMD") -> catalog key.
# Order matters: variants with other specs (PCIe, NVL, A10G) map to None = not in the catalog.
_CUDA_NAMES: tuple[tuple[str, str | None], ...] = (
    (r"H100.*(PCIE)", "H100-PCIe"),
    (r"H100.*NVL", None),
    (r"\bH100\b", "H100"),
    (r"H200.*NVL", None),
    (r"\bH200\b", "H200"),
    (r"\bH20\b", "H20"),
    (r"\bH800\b", "H800"),
    (r"A100.*PCIE", None),
    (r"A100.*80\s*GB", "A100-80G"),
    (r"A100.*40\s*GB", "A100-40G"),
    (r"\bL40S\b", "L40S"),
    (r"\bL20\b", "L20"),
    (r"\bL4\b", "L4"),
    (r"RTX 4090", "RTX4090"),
    (r"\bA10\b", "A10"),
    (r"\bB200\b", "B200"),
    (r"MI300X", "MI300X"),
)


def match_cuda_name(device_name: str) -> str | None:
    """Catalog key of a torch device name ("NVIDIA H100 80GB HBM3" -> "H100"), or None."""
    text = re.sub(r"\b(NVIDIA|GEFORCE|AMD|INSTINCT)\b", " ", device_name.upper())
    for pattern, key in _CUDA_NAMES:
        if re.search(pattern, text):
            return key
    return None


def _cuda_device(index: int, catalog: Mapping[str, DeviceSpec]) -> DeviceSpec:
    """Visible CUDA device `index`: its catalog spec with the memory torch reports, or an unknown spec."""
    import torch  # local: importing torch costs seconds and most callers never need it

    props = torch.cuda.get_device_properties(index)
    memory_src = f"torch.cuda.get_device_properties({index}).total_memory; read {_today()}"
    key = match_cuda_name(props.name)
    if key is not None and key in catalog:
        base = catalog[key]
        return replace(base, memory_bytes=float(props.total_memory),
                       sources={**base.sources, "memory_bytes": memory_src})  # fmt: skip
    name = re.sub(r"\s+", "-", props.name.strip()) or f"cuda{index}"
    return DeviceSpec(
        name=name, full_name=props.name, vendor=props.name.split()[0] if props.name else "unknown",
        bf16_flops_per_s=None, memory_bytes=float(props.total_memory), mem_bandwidth_bytes_per_s=None,
        power_w=None, intra_link_bytes_per_s=None, nic_gbps=None, usd_per_hour=None,
        sources={"memory_bytes": memory_src},
    )  # fmt: skip


def local_devices(catalog: Mapping[str, DeviceSpec] | None = None) -> list[DeviceSpec]:
    """The local CPU, then each visible CUDA device (matched to the catalog by name when possible)."""
    catalog = load_catalog() if catalog is None else catalog
    devices = [local_cpu()]
    try:
        import torch
    except ImportError:
        return devices
    if torch.cuda.is_available():
        devices += [_cuda_device(i, catalog) for i in range(torch.cuda.device_count())]
    return devices
