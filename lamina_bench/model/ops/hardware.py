"""The datasheet facts the kernel equations read, for one device of the catalog.

Peaks come from the device catalog (catalog/device_table.py, every value sourced); the SM count, the
L2 size and the boost clock from the same table's `sm_count`, `l2_bytes` and `boost_clock_hz` (sourced
there; not DeviceSpec fields; the clock only scales derived constants, calibration.py). A device
without a published SM count takes its calibration parent's (see calibration.DERIVE_FROM), and says so in
`sm_source`; a device without a published L2 size has `l2_bytes` None, and the model then gives it no L2
hits (cache.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from lamina_bench.catalog.device_spec import DeviceSpec
from lamina_bench.catalog.device_table import BUILTIN
from lamina_bench.errors import UserInputError

_SM_COUNTS = {
    row["name"]: (int(row["sm_count"]), row["sm_count_src"]) for row in BUILTIN if "sm_count" in row
}
_L2_BYTES = {
    row["name"]: (float(row["l2_bytes"]), row["l2_bytes_src"]) for row in BUILTIN if "l2_bytes" in row
}
_CLOCKS = {
    row["name"]: (float(row["boost_clock_hz"]), row["boost_clock_hz_src"])
    for row in BUILTIN
    if "boost_clock_hz" in row
}

# Link kinds an all-reduce or a point-to-point message can use (validation files name them in `link`).
LINKS = ("nvlink", "pcie", "rdma")
# Devices whose catalog `intra_link_bytes_per_s` is a PCIe link (no NVLink between them).
_PCIE_ONLY = {"H100-PCIe", "L40S", "L20", "L4", "RTX4090", "A10", "A40"}


@dataclass(frozen=True)
class Hardware:
    """Peaks of one device: memory bandwidth, dense bf16 flops, intra-node link, NIC, SM count, L2 size."""

    name: str
    mem_bw: float  # bytes/s
    flops: float  # dense bf16 flop/s
    intra_link_bw: float | None  # bytes/s per direction
    intra_link: str  # "nvlink" | "pcie"
    nic_bw: float | None  # bytes/s (NIC line rate / 8)
    sms: int
    sm_source: str
    l2_bytes: float | None = None  # on-chip last-level cache, bytes; None = not published
    l2_source: str = "not published"

    def link_bw(self, link: str) -> float:
        """Per-direction bandwidth of `link` ("nvlink", "pcie" or "rdma"), bytes/s."""
        if link not in LINKS:
            raise UserInputError(f"unknown link {link!r}; valid: {', '.join(LINKS)}")
        bw = self.nic_bw if link == "rdma" else self.intra_link_bw
        if bw is None:
            field = "nic_gbps" if link == "rdma" else "intra_link_bytes_per_s"
            raise UserInputError(
                f"device {self.name} has no {field} in the catalog; cannot model a {link} link"
            )
        return bw


def sm_count(name: str) -> tuple[int, str] | None:
    """(SMs, source) from the device table, or None when none is published there."""
    return _SM_COUNTS.get(name)


def l2_size(name: str) -> tuple[float, str] | None:
    """(L2 bytes, source) from the device table, or None when none is published there."""
    return _L2_BYTES.get(name)


def boost_clock(name: str) -> tuple[float, str] | None:
    """(maximum SM clock in Hz, source) from the device table, or None when none is published there."""
    return _CLOCKS.get(name)


def hardware(device: DeviceSpec, fallback_sms: tuple[int, str] | None = None) -> Hardware:
    """The facts of `device`; `fallback_sms` (a parent's count) where the table has none."""
    missing = [f for f in ("mem_bandwidth_bytes_per_s", "bf16_flops_per_s") if getattr(device, f) is None]
    if missing:
        raise UserInputError(
            f"device {device.name} has no {', '.join(missing)} in the catalog; cannot model operator "
            "times (add it to a catalog file or give a measured profile)"
        )
    sms = sm_count(device.name) or fallback_sms
    if sms is None:
        raise UserInputError(
            f"device {device.name} has no SM count and no calibrated parent to take one from"
        )
    own = sm_count(device.name) is not None
    l2 = l2_size(device.name)
    return Hardware(
        name=device.name,
        mem_bw=device.mem_bandwidth_bytes_per_s,
        flops=device.bf16_flops_per_s,
        intra_link_bw=device.intra_link_bytes_per_s,
        intra_link="pcie" if device.name in _PCIE_ONLY else "nvlink",
        nic_bw=None if device.nic_gbps is None else device.nic_gbps * 1e9 / 8.0,
        sms=sms[0],
        sm_source=sms[1] if own else f"derived: {sms[1]} (the calibration parent's count)",
        l2_bytes=None if l2 is None else l2[0],
        l2_source="not published" if l2 is None else l2[1],
    )
