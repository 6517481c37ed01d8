"""The telemetry table: one row per NVML sample of one device, aligned with the sweep point it fell in.

Units are in the names; a metric a device does not support is None, never 0. What each metric means:
`measure/telemetry.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

# Per-sample metrics, in TelemetrySample field order; window summaries give mean and max of each.
TELEMETRY_METRICS: tuple[str, ...] = (
    "sm_busy_pct",
    "mem_busy_pct",
    "mem_used_bytes",
    "power_w",
    "sm_clock_mhz",
    "mem_clock_mhz",
    "pcie_tx_bytes_per_s",
    "pcie_rx_bytes_per_s",
    "dram_bw_util_pct",
)

# Telemetry table schema (column -> pandas dtype); the results store writes it as telemetry.parquet.
TELEMETRY_COLUMNS: dict[str, str] = {
    "device_index": "Int64",
    "t_mono_s": "float64",  # time.monotonic(): for gaps and window membership
    "unix_time_s": "float64",  # time.time(): to line samples up with other logs
    "point_id": "string",  # the window open when the sample was taken, else missing
    **dict.fromkeys(TELEMETRY_METRICS, "float64"),
    "energy_counter_j": "float64",
    "error": "string",  # the NVML error that ended this device's sampling, else missing
}


@dataclass(frozen=True)
class TelemetrySample:
    """One reading of one device. A metric the device does not support is None, never 0."""

    device_index: int
    t_mono_s: float
    unix_time_s: float
    point_id: str | None = None
    sm_busy_pct: float | None = None
    mem_busy_pct: float | None = None
    mem_used_bytes: float | None = None
    power_w: float | None = None
    sm_clock_mhz: float | None = None
    mem_clock_mhz: float | None = None
    pcie_tx_bytes_per_s: float | None = None
    pcie_rx_bytes_per_s: float | None = None
    dram_bw_util_pct: float | None = None
    energy_counter_j: float | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if self.device_index < 0:
            raise ValueError(f"device_index must be >= 0, got {self.device_index}")


def samples_frame(samples: Sequence[TelemetrySample]) -> pd.DataFrame:
    """The telemetry table: one row per sample, columns and dtypes of TELEMETRY_COLUMNS."""
    rows = [dataclasses.asdict(s) for s in samples]
    frame = pd.DataFrame(rows, columns=list(TELEMETRY_COLUMNS))
    return frame.astype(TELEMETRY_COLUMNS)
