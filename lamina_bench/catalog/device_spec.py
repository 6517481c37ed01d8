"""What the catalog knows of one device: dense BF16 peak, memory, bandwidth, power, links and price.

Specs are dense (no sparsity) BF16 tensor throughput, memory, memory bandwidth, board power, intra-node
link bandwidth per direction and the cloud NIC per device. A value nobody published stays None and is
shown as "n/a"; it is never guessed. Every value that is not None names its source and date.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from lamina_bench.errors import UserInputError

# Numeric fields that carry a source when not None (units in the names).
VALUE_FIELDS = (
    "bf16_flops_per_s",
    "memory_bytes",
    "mem_bandwidth_bytes_per_s",
    "power_w",
    "intra_link_bytes_per_s",
    "nic_gbps",
    "usd_per_hour",
)
TEXT_FIELDS = ("full_name", "vendor")


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
    usd_per_hour: float | None = None  # rental price per device-hour, from one price set (catalog/prices.py)
    price_set: str | None = None  # the set that priced it ("user file ..." when a user file sets the price)
    # field -> "source; date"; left out of the hash (a mapping is unhashable) but compared by ==
    sources: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.name or any(c.isspace() for c in self.name):
            raise UserInputError(f"device name {self.name!r} must be non-empty without spaces")
        if self.memory_bytes is None:
            raise UserInputError(f"device {self.name}: memory_bytes is required")
        for name in VALUE_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                raise UserInputError(f"device {self.name}: {name} must be a positive number, got {value!r}")
            if not self.sources.get(name):
                raise UserInputError(f"device {self.name}: {name} = {value} has no source")
        # Freeze the mapping so the frozen dataclass cannot be changed through it.
        object.__setattr__(self, "sources", MappingProxyType(dict(self.sources)))
