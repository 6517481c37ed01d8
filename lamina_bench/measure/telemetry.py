"""Telemetry windows: one device's NVML samples over one sweep point, summarised, with a validity verdict.

The sampler that takes the samples: `measure/nvml.py`.

What each metric is (NVML API reference, "nvmlUtilization_t", "nvmlDeviceGetPcieThroughput", "GPM"):
- `sm_busy_pct`: utilization.gpu, the percent of the last sample period (1/6 s to 1 s, per product)
  during which at least one kernel ran. Not the share of SMs in use.
- `mem_busy_pct`: utilization.memory, the percent of that period during which device memory was read or
  written. It is a share of TIME, not bytes/s: never multiply it by peak bandwidth to get a bandwidth.
- `dram_bw_util_pct`: GPM NVML_GPM_METRIC_DRAM_BW_UTIL (Hopper and newer, where the driver supports GPM),
  DRAM bandwidth used as a percent of the theoretical maximum, between two GPM samples at least 0.1 s
  apart (the NVML docs ask for > 100 ms between the two nvmlGpmSampleGet calls).
- `pcie_tx_bytes_per_s` / `pcie_rx_bytes_per_s`: nvmlDeviceGetPcieThroughput, which counts bytes over a
  20 ms window inside the call and returns KB/s; taken as KB = 1000 B. Each call blocks ~20 ms, so PCIe
  is read at most every `pcie_interval_s` (default 1 s) to keep the sampling interval.
- `energy_counter_j`: nvmlDeviceGetTotalEnergyConsumption (mJ since driver load, Volta and newer); a
  window's energy is the counter difference between its boundary samples.
Busy percents and GPM values describe a trailing period, so a window's first samples partly describe
the time just before it: prefer windows of several seconds over windows of one sampling interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lamina_bench.results.telemetry import TELEMETRY_METRICS as METRICS
from lamina_bench.results.telemetry import TelemetrySample


@dataclass(frozen=True)
class DeviceInfo:
    """A device the sampler watches; `gpm_reason` says why DRAM bandwidth utilization is missing."""

    index: int
    name: str | None
    uuid: str | None
    gpm_supported: bool
    gpm_reason: str | None = None


@dataclass(frozen=True)
class NvmlStatus:
    """Whether NVML could be used, and if not, why (`reason` is one line)."""

    available: bool
    reason: str | None
    driver_version: str | None = None
    devices: tuple[DeviceInfo, ...] = ()

    def __post_init__(self) -> None:
        if self.available == (self.reason is not None):
            raise ValueError("NvmlStatus: give a reason exactly when NVML is not available")


@dataclass(frozen=True)
class WindowSummary:
    """Telemetry of one device over one window (`device_index` None: no device could be sampled).

    `means` / `maxes` map each name in METRICS to a float, or None where no sample had it.
    `energy_j` is the energy counter's difference between the window's first and last sample.
    """

    point_id: str
    device_index: int | None
    begin_s: float
    end_s: float
    sample_count: int
    energy_j: float | None
    means: Mapping[str, float | None]
    maxes: Mapping[str, float | None]
    reasons: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.end_s < self.begin_s:
            raise ValueError(
                f"window {self.point_id!r} ends ({self.end_s}) before it begins ({self.begin_s})"
            )
        if self.sample_count < 0:
            raise ValueError(f"sample_count must be >= 0, got {self.sample_count}")

    @property
    def valid(self) -> bool:
        return not self.reasons

    @property
    def verdict(self) -> str:
        """`valid`, or `invalid: <reason>; <reason>`."""
        return "valid" if self.valid else "invalid: " + "; ".join(self.reasons)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.begin_s

    def as_row(self) -> dict[str, Any]:
        """Flat dict: point_id, device_index, duration_s, sample_count, energy_j, verdict, <metric>_mean/_max."""
        row: dict[str, Any] = {
            "point_id": self.point_id,
            "device_index": self.device_index,
            "duration_s": self.duration_s,
            "sample_count": self.sample_count,
            "energy_j": self.energy_j,
            "verdict": self.verdict,
        }
        for name in METRICS:
            row[f"{name}_mean"] = self.means.get(name)
            row[f"{name}_max"] = self.maxes.get(name)
        return row


# ---- pure summary functions ------------------------------------------------------------------------


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _energy_j(samples: Sequence[TelemetrySample]) -> tuple[float | None, str | None]:
    """Counter difference between the first and last sample that have the counter, and a reason if none."""
    counters = _finite([s.energy_counter_j for s in samples])
    if len(counters) < 2:
        return None, None  # "too few samples" or "not supported" is said elsewhere
    delta = counters[-1] - counters[0]
    if delta < 0:
        return None, f"energy counter went backwards by {-delta:.3f} J (driver reloaded?)"
    return delta, None


def summarize_window(
    samples: Sequence[TelemetrySample],
    point_id: str,
    device_index: int,
    begin_s: float,
    end_s: float,
    interval_s: float,
    min_samples: int = 3,
    lost: tuple[float, str] | None = None,
) -> WindowSummary:
    """Summarize one device's samples in [begin_s, end_s] (monotonic seconds) with its validity verdict.

    Invalid when: the device was lost (`lost` = (t_mono_s, error)) before the window ended; a gap between
    consecutive samples (window boundaries included) exceeds 2 x interval_s; fewer than `min_samples`
    samples; the energy counter went backwards.
    """
    inside = sorted(
        (s for s in samples if s.device_index == device_index and begin_s <= s.t_mono_s <= end_s),
        key=lambda s: s.t_mono_s,
    )
    readings = [s for s in inside if s.error is None]
    reasons: list[str] = []
    if lost is not None and lost[0] <= end_s:
        reasons.append(f"device {device_index} disappeared at t={lost[0]:.3f} s: {lost[1]}")
    times = [begin_s] + [s.t_mono_s for s in readings] + [end_s]
    max_gap_s = max(b - a for a, b in zip(times, times[1:], strict=False))
    if readings and max_gap_s > 2 * interval_s:
        reasons.append(f"sample gap {max_gap_s * 1e3:.1f} ms > 2 x interval {interval_s * 1e3:.1f} ms")
    if len(readings) < min_samples:
        reasons.append(f"too few samples ({len(readings)} < {min_samples})")
    energy_j, energy_problem = _energy_j(readings)
    if energy_problem:
        reasons.append(energy_problem)
    means: dict[str, float | None] = {}
    maxes: dict[str, float | None] = {}
    for name in METRICS:
        values = _finite([getattr(s, name) for s in readings])
        means[name] = sum(values) / len(values) if values else None
        maxes[name] = max(values) if values else None
    return WindowSummary(
        point_id, device_index, begin_s, end_s, len(readings), energy_j, means, maxes, tuple(reasons)
    )


def combine_summaries(summaries: Sequence[WindowSummary]) -> dict[str, Any]:
    """Fold one window's per-device summaries into points-table fields.

    energy_j and power_w_mean are sums over devices (None if any device lacks them); busy and
    utilization percents are means over devices; telemetry_verdict is `valid` only if every device is.
    """
    reasons = [r for s in summaries for r in s.reasons]
    if not summaries:
        reasons = ["no telemetry windows"]

    def total(values: list[float | None]) -> float | None:
        return None if not values or any(v is None for v in values) else float(sum(values))

    def mean(values: list[float | None]) -> float | None:
        kept = _finite(values)
        return sum(kept) / len(kept) if kept else None

    return {
        "energy_j": total([s.energy_j for s in summaries]),
        "power_w_mean": total([s.means.get("power_w") for s in summaries]),
        "sm_busy_pct_mean": mean([s.means.get("sm_busy_pct") for s in summaries]),
        "mem_busy_pct_mean": mean([s.means.get("mem_busy_pct") for s in summaries]),
        "dram_bw_util_pct_mean": mean([s.means.get("dram_bw_util_pct") for s in summaries]),
        "telemetry_verdict": "valid" if not reasons else "invalid: " + "; ".join(dict.fromkeys(reasons)),
    }
