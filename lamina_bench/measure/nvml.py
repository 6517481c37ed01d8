"""The NVML sampler: a background thread reading every GPU, with windows aligned to sweep points.

    sampler = TelemetrySampler(interval_s=0.1)
    with sampler:                          # nvmlInit + background thread; a no-op without NVML or GPU
        with sampler.window(point_id):     # boundary samples at enter and exit
            run_the_point()
    summaries = sampler.window_summary(point_id)   # one WindowSummary per device (measure/telemetry.py)
    table = samples_frame(sampler.samples())       # the telemetry table (results/telemetry.py)

The vendor layer is the `pynvml` module (package nvidia-ml-py), imported when the sampler starts, so
tests put a fake module in `sys.modules["pynvml"]`. Without NVML or without a GPU the sampler records
why, samples nothing, and every summary says `invalid: <reason>`; the run goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from lamina_bench.catalog.local import load_nvml
from lamina_bench.errors import UserInputError
from lamina_bench.measure.telemetry import DeviceInfo, NvmlStatus, WindowSummary, summarize_window
from lamina_bench.results.telemetry import TelemetrySample

_UNSUPPORTED_CODES = {3: "not supported", 4: "no permission", 13: "function not found"}
_GPM_MIN_INTERVAL_S = 0.1  # NVML GPM docs: > 100 ms between the two samples of a metric
_KB_BYTES = 1e3  # nvmlDeviceGetPcieThroughput returns KB/s; decimal KB per the project's SI rule

# ---- vendor layer: one NVML device -----------------------------------------------------------------


class _DeviceLost(Exception):
    """An NVML call on a device handle failed in a way that means the device is gone."""


def _error_code(exc: BaseException) -> int | None:
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip().rstrip(":")


class _GpmReader:
    """DRAM bandwidth utilization from pairs of GPM samples taken >= 0.1 s apart (Hopper and newer)."""

    def __init__(self, nvml: Any, handle: Any) -> None:
        self._nvml = nvml
        self._handle = handle
        self._buffers = [nvml.nvmlGpmSampleAlloc(), nvml.nvmlGpmSampleAlloc()]
        self._last_s: float | None = None  # time of the sample in _buffers[0]

    @staticmethod
    def support(nvml: Any, handle: Any) -> str | None:
        """None if GPM DRAM bandwidth can be read, else why not (one line)."""
        needed = ("nvmlGpmQueryDeviceSupport", "nvmlGpmMetricsGet", "NVML_GPM_METRIC_DRAM_BW_UTIL")
        missing = [name for name in needed if not hasattr(nvml, name)]
        if missing:
            return f"pynvml has no {', '.join(missing)} (nvidia-ml-py too old)"
        try:
            supported = bool(nvml.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice)
        except Exception as exc:  # any NVML failure here only means "no GPM"
            return f"GPM query failed: {_describe(exc)}"
        return None if supported else "GPM not supported on this device or driver (needs Hopper or newer)"

    def read(self, now_s: float) -> float | None:
        """Take a GPM sample if >= 0.1 s passed since the last; return the metric over that pair."""
        if self._last_s is not None and now_s - self._last_s < _GPM_MIN_INTERVAL_S:
            return None
        nvml = self._nvml
        nvml.nvmlGpmSampleGet(self._handle, self._buffers[1])
        previous_s, self._last_s = self._last_s, now_s
        self._buffers.reverse()  # the newest sample becomes the next pair's first
        if previous_s is None:
            return None
        request = nvml.c_nvmlGpmMetricsGet_t()
        request.version = nvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = 1
        request.sample1, request.sample2 = self._buffers[1], self._buffers[0]
        request.metrics[0].metricId = nvml.NVML_GPM_METRIC_DRAM_BW_UTIL
        nvml.nvmlGpmMetricsGet(request)
        metric = request.metrics[0]
        return float(metric.value) if metric.nvmlReturn == 0 else None

    def close(self) -> None:
        for buffer in self._buffers:
            with contextlib.suppress(Exception):  # freeing after a lost device may fail; nothing to do
                self._nvml.nvmlGpmSampleFree(buffer)


class _Device:
    """Reads one device; turns unsupported queries into None and other NVML errors into _DeviceLost."""

    def __init__(self, nvml: Any, index: int, pcie_interval_s: float | None, now_s: float) -> None:
        self.nvml = nvml
        self.index = index
        self.unsupported: dict[str, str] = {}  # probe name -> why
        self.lost: tuple[float, str] | None = None  # (t_mono_s, error)
        self._pcie_interval_s = pcie_interval_s
        self._pcie_last_s: float | None = None
        self.gpm: _GpmReader | None = None
        try:
            self.handle = nvml.nvmlDeviceGetHandleByIndex(index)
        except Exception as exc:  # a broken device: the others are still sampled
            if not _is_nvml_error(nvml, exc):
                raise
            self.handle, self.lost = None, (now_s, _describe(exc))
            self.info = DeviceInfo(index, None, None, False, "device unavailable")
            return
        gpm_reason = _GpmReader.support(nvml, self.handle)
        if gpm_reason is None:
            try:
                self.gpm = _GpmReader(nvml, self.handle)
            except Exception as exc:  # GPM is optional
                gpm_reason = f"GPM sample allocation failed: {_describe(exc)}"
        self.info = DeviceInfo(
            index,
            self._text("nvmlDeviceGetName"),
            self._text("nvmlDeviceGetUUID"),
            self.gpm is not None,
            gpm_reason,
        )

    def _text(self, function: str) -> str | None:
        try:
            value = getattr(self.nvml, function)(self.handle)
        except Exception:  # names are informational only
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    def _probes(self, now_s: float) -> list[tuple[str, Callable[[], dict[str, float | None]]]]:
        nvml, h = self.nvml, self.handle

        def utilization() -> dict[str, float | None]:
            rates = nvml.nvmlDeviceGetUtilizationRates(h)
            return {"sm_busy_pct": float(rates.gpu), "mem_busy_pct": float(rates.memory)}

        probes = [
            ("utilization", utilization),
            ("memory", lambda: {"mem_used_bytes": float(nvml.nvmlDeviceGetMemoryInfo(h).used)}),
            ("power", lambda: {"power_w": nvml.nvmlDeviceGetPowerUsage(h) / 1e3}),  # mW -> W
            ("energy", lambda: {"energy_counter_j": nvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1e3}),
            ("sm_clock", lambda: {"sm_clock_mhz": float(nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM))}),
            (
                "mem_clock",
                lambda: {"mem_clock_mhz": float(nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_MEM))},
            ),
        ]
        if self._pcie_due(now_s):
            self._pcie_last_s = now_s
            probes.append(("pcie", self._pcie))
        return probes

    def _pcie(self) -> dict[str, float | None]:
        nvml, h = self.nvml, self.handle
        tx_kb_per_s = nvml.nvmlDeviceGetPcieThroughput(h, nvml.NVML_PCIE_UTIL_TX_BYTES)
        rx_kb_per_s = nvml.nvmlDeviceGetPcieThroughput(h, nvml.NVML_PCIE_UTIL_RX_BYTES)
        return {
            "pcie_tx_bytes_per_s": tx_kb_per_s * _KB_BYTES,
            "pcie_rx_bytes_per_s": rx_kb_per_s * _KB_BYTES,
        }

    def _pcie_due(self, now_s: float) -> bool:
        if self._pcie_interval_s is None:
            return False
        return self._pcie_last_s is None or now_s - self._pcie_last_s >= self._pcie_interval_s

    def read(self, now_s: float) -> dict[str, float | None]:
        """All supported metrics now; raises _DeviceLost on an NVML error that is not 'unsupported'."""
        values: dict[str, float | None] = {}
        for name, probe in self._probes(now_s):
            if name in self.unsupported:
                continue
            try:
                values.update(probe())
            except Exception as exc:
                self._classify(name, exc)
        if self.gpm is not None:
            try:
                values["dram_bw_util_pct"] = self.gpm.read(now_s)
            except Exception as exc:  # GPM is optional: a failing GPM read disables GPM, not the device
                self._classify("gpm", exc, lost_ok=False)
                self.gpm.close()
                self.gpm = None
        return values

    def _classify(self, probe: str, exc: Exception, lost_ok: bool = True) -> None:
        if not _is_nvml_error(self.nvml, exc):
            raise exc  # a bug, not a device problem: let the sampler record it
        code = _error_code(exc)
        if code in _UNSUPPORTED_CODES or not lost_ok:
            self.unsupported[probe] = _describe(exc)
            return
        raise _DeviceLost(_describe(exc)) from exc

    def close(self) -> None:
        if self.gpm is not None:
            self.gpm.close()
            self.gpm = None


def _is_nvml_error(nvml: Any, exc: BaseException) -> bool:
    base = getattr(nvml, "NVMLError", None)
    return isinstance(base, type) and isinstance(exc, base)


# ---- the sampler -----------------------------------------------------------------------------------


@dataclass
class _Window:
    begin_s: float
    end_s: float | None = None


@dataclass(eq=False)
class TelemetrySampler:
    """Background NVML sampler; see the module docstring. Not reusable after stop().

    interval_s: sampling period (default 0.1 s). device_indices: NVML indices to watch (None: all;
    NVML numbers devices physically and ignores CUDA_VISIBLE_DEVICES). min_samples: fewer readings in a
    window make it invalid. pcie_interval_s: how often to read PCIe throughput (None: never).
    """

    interval_s: float = 0.1
    device_indices: Sequence[int] | None = None
    min_samples: int = 3
    pcie_interval_s: float | None = 1.0
    clock: Callable[[], float] = time.monotonic
    status: NvmlStatus = field(init=False)
    sampler_error: str | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if not (self.interval_s > 0 and math.isfinite(self.interval_s)):
            raise ValueError(f"interval_s must be a positive number of seconds, got {self.interval_s}")
        if self.min_samples < 1:
            raise ValueError(f"min_samples must be >= 1, got {self.min_samples}")
        if self.pcie_interval_s is not None and not self.pcie_interval_s > 0:
            raise ValueError(f"pcie_interval_s must be > 0 or None, got {self.pcie_interval_s}")
        self.status = NvmlStatus(False, "sampler not started")
        self._nvml: Any = None
        self._devices: list[_Device] = []
        self._samples: list[TelemetrySample] = []
        self._windows: dict[str, _Window] = {}
        self._open: list[str] = []  # stack of open window ids; samples carry the innermost
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False

    # lifecycle -------------------------------------------------------------------------------------

    def start(self) -> TelemetrySampler:
        if self._started:
            raise RuntimeError("TelemetrySampler.start(): already started (a sampler runs once)")
        self._started = True
        self.status = self._init_nvml()
        if self.status.available:
            self._thread = threading.Thread(target=self._run, name="lamina-telemetry", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            for device in self._devices:
                device.close()
            if self._nvml is not None:
                with contextlib.suppress(Exception):  # shutting down after a lost GPU may fail
                    self._nvml.nvmlShutdown()
                self._nvml = None

    def __enter__(self) -> TelemetrySampler:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _init_nvml(self) -> NvmlStatus:
        nvml, reason = load_nvml()
        if nvml is None:
            return NvmlStatus(False, reason)
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded on machines without a GPU
            return NvmlStatus(False, f"no NVML: nvmlInit failed ({_describe(exc)})")
        self._nvml = nvml
        try:
            return self._open_devices(nvml)
        except UserInputError:
            self.stop()
            raise
        except Exception as exc:  # e.g. a handle lookup failing on a broken device: record, go on
            self.stop()
            return NvmlStatus(False, f"NVML device setup failed ({_describe(exc)})")

    def _open_devices(self, nvml: Any) -> NvmlStatus:
        count = nvml.nvmlDeviceGetCount()
        driver = None
        with contextlib.suppress(Exception):
            raw = nvml.nvmlSystemGetDriverVersion()
            driver = raw.decode() if isinstance(raw, bytes) else str(raw)
        if count == 0:
            return NvmlStatus(False, "no GPU: NVML reports 0 devices", driver)
        indices = list(range(count)) if self.device_indices is None else list(self.device_indices)
        bad = [i for i in indices if not 0 <= i < count]
        if bad:
            raise UserInputError(
                f"telemetry device indices {bad} out of range; NVML sees devices 0..{count - 1}"
            )
        self._devices = [_Device(nvml, i, self.pcie_interval_s, self.clock()) for i in indices]
        return NvmlStatus(True, None, driver, tuple(d.info for d in self._devices))

    # sampling --------------------------------------------------------------------------------------

    def _run(self) -> None:
        next_s = self.clock()
        while not self._stop.is_set():
            try:
                self.sample_now()
            except Exception as exc:  # record, stop sampling; summaries then show the gap and the error
                self.sampler_error = f"sampler thread failed: {_describe(exc)}"
                return
            next_s += self.interval_s
            now_s = self.clock()
            if next_s < now_s:  # fell behind (slow NVML calls): skip missed ticks; gaps are flagged
                next_s = now_s
            self._stop.wait(next_s - now_s)

    def _sample_boundary(self) -> None:
        """A window's boundary sample; an error is recorded (summaries name it) and stops sampling, never
        failing the point being measured."""
        try:
            if self.sampler_error is None:
                self.sample_now()
        except Exception as exc:  # noqa: BLE001 - the measurement goes on without telemetry
            self.sampler_error = f"sampling failed: {_describe(exc)}"
            self._stop.set()

    def sample_now(self) -> None:
        """Read every live device once (the thread calls this; windows call it at their boundaries)."""
        with self._lock:
            point_id = self._open[-1] if self._open else None
            for device in self._devices:
                if device.lost is None:
                    self._samples.append(self._read(device, point_id))

    def _read(self, device: _Device, point_id: str | None) -> TelemetrySample:
        now_s, unix_s = self.clock(), time.time()
        try:
            values = device.read(now_s)
        except _DeviceLost as exc:
            device.lost = (now_s, str(exc))
            return TelemetrySample(device.index, now_s, unix_s, point_id, error=str(exc))
        return TelemetrySample(device.index, now_s, unix_s, point_id, **values)

    # windows ---------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def window(self, point_id: str) -> Iterator[None]:
        """Mark a window [enter, exit] for `point_id`, with a sample taken at each boundary."""
        if not self._started:
            raise RuntimeError("TelemetrySampler.window(): call start() (or use `with sampler:`) first")
        with self._lock:
            if point_id in self._windows:
                raise ValueError(f"telemetry window {point_id!r} was already recorded; point ids are unique")
            self._windows[point_id] = _Window(self.clock())
            self._open.append(point_id)
        self._sample_boundary()
        try:
            yield
        finally:
            self._sample_boundary()
            with self._lock:
                self._open.remove(point_id)
                self._windows[point_id].end_s = self.clock()

    def window_summary(self, point_id: str) -> list[WindowSummary]:
        """One summary per watched device (one device-less summary when nothing could be sampled)."""
        with self._lock:
            window = self._windows.get(point_id)
            if window is None:
                known = ", ".join(self._windows) or "none"
                raise KeyError(f"no telemetry window {point_id!r}; recorded windows: {known}")
            end_s = window.end_s if window.end_s is not None else self.clock()
            samples = list(self._samples)
            devices = [(d.index, d.lost) for d in self._devices]
        if not self.status.available:
            reason = self.status.reason or "no devices"
            return [WindowSummary(point_id, None, window.begin_s, end_s, 0, None, {}, {}, (reason,))]
        summaries = []
        for index, lost in devices:
            summary = summarize_window(
                samples, point_id, index, window.begin_s, end_s, self.interval_s, self.min_samples, lost
            )
            if self.sampler_error:
                summary = dataclasses.replace(summary, reasons=(*summary.reasons, self.sampler_error))
            summaries.append(summary)
        return summaries

    def samples(self) -> list[TelemetrySample]:
        """A copy of every sample so far, in the order taken."""
        with self._lock:
            return list(self._samples)
