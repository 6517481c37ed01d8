"""The devices of this machine: the host CPU (peaks unknown, never guessed) and visible CUDA devices."""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import platform
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from lamina_bench.catalog.device_spec import DeviceSpec


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
        name="CPU",
        full_name=model,
        vendor=vendor,
        bf16_flops_per_s=None,
        memory_bytes=memory,
        mem_bandwidth_bytes_per_s=None,
        power_w=None,
        intra_link_bytes_per_s=None,
        nic_gbps=None,
        usd_per_hour=None,
        sources={"memory_bytes": source},
    )


# ---- user file --------------------------------------------------------------------------------------


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
        return replace(
            base, memory_bytes=float(props.total_memory), sources={**base.sources, "memory_bytes": memory_src}
        )
    name = re.sub(r"\s+", "-", props.name.strip()) or f"cuda{index}"
    return DeviceSpec(
        name=name,
        full_name=props.name,
        vendor=props.name.split()[0] if props.name else "unknown",
        bf16_flops_per_s=None,
        memory_bytes=float(props.total_memory),
        mem_bandwidth_bytes_per_s=None,
        power_w=None,
        intra_link_bytes_per_s=None,
        nic_gbps=None,
        usd_per_hour=None,
        sources={"memory_bytes": memory_src},
    )


def local_devices(catalog: Mapping[str, DeviceSpec]) -> list[DeviceSpec]:
    """The local CPU, then each visible CUDA device (matched to `catalog` by name when possible)."""
    devices = [local_cpu()]
    try:
        import torch
    except ImportError:
        return devices
    if torch.cuda.is_available():
        devices += [_cuda_device(i, catalog) for i in range(torch.cuda.device_count())]
    return devices


def load_nvml() -> tuple[Any | None, str | None]:
    """The pynvml module (package nvidia-ml-py), or None and why it could not be imported."""
    try:
        import pynvml
    except ImportError as exc:
        return None, f"no NVML: cannot import pynvml ({exc})"
    return pynvml, None


def nvml_driver_version() -> str | None:
    """The NVIDIA driver version through NVML, or None without NVML or a driver."""
    nvml, _ = load_nvml()
    if nvml is None:
        return None
    try:
        nvml.nvmlInit()
    except Exception:
        return None
    try:
        raw = nvml.nvmlSystemGetDriverVersion()
        return raw.decode() if isinstance(raw, bytes) else str(raw)
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()
