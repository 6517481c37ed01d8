"""Telemetry tests against a fake `pynvml` module whose counters the test controls.

The fake mirrors the real nvidia-ml-py API that telemetry.py calls (names, units: mW, mJ, KB/s, MHz,
NVMLError with `.value`, GPM structs); it is put in sys.modules["pynvml"] by monkeypatch.
"""

from __future__ import annotations

import math
import sys
import threading
import time
import types
from dataclasses import dataclass, field

import pytest

from lamina_bench.errors import UserInputError
from lamina_bench.measure.nvml import TelemetrySampler
from lamina_bench.measure.telemetry import WindowSummary, combine_summaries, summarize_window
from lamina_bench.results.telemetry import TELEMETRY_COLUMNS, TelemetrySample, samples_frame
from lamina_bench.results.telemetry import TELEMETRY_METRICS as METRICS

INTERVAL_S = 0.01

# ---- the fake NVML -----------------------------------------------------------------------------------


class FakeNVMLError(Exception):
    _names = {3: "Not Supported", 12: "NVML Shared Library Not Found", 15: "GPU is lost"}

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return self._names.get(self.value, f"NVML Error with code {self.value}")


class FakeGpuIsLost(FakeNVMLError):
    def __init__(self) -> None:
        super().__init__(15)


@dataclass
class FakeDevice:
    """Values as NVML reports them: percents, bytes, mW, mJ, MHz, KB/s."""

    util_gpu: int = 40
    util_mem: int = 20
    mem_used: int = 10_000_000_000
    power_mw: int = 250_000
    energy_mj: int = 5_000_000
    sm_mhz: int = 1980
    mem_mhz: int = 2619
    pcie_tx_kb: int = 1000
    pcie_rx_kb: int = 3000
    gpm: bool = True
    dram_pct: float = 55.0
    energy_supported: bool = True
    lost: bool = False
    missing_at_start: bool = False  # nvmlDeviceGetHandleByIndex fails
    calls_after_lost: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def make_fake_nvml(devices: list[FakeDevice], init_error: int | None = None) -> types.ModuleType:
    nvml = types.ModuleType("pynvml")
    nvml.NVMLError = FakeNVMLError
    nvml.NVMLError_GpuIsLost = FakeGpuIsLost
    nvml.NVML_CLOCK_SM, nvml.NVML_CLOCK_MEM = 1, 2
    nvml.NVML_PCIE_UTIL_TX_BYTES, nvml.NVML_PCIE_UTIL_RX_BYTES = 0, 1
    nvml.NVML_GPM_METRIC_DRAM_BW_UTIL = 10
    nvml.NVML_GPM_METRICS_GET_VERSION = 1
    nvml.shutdown_calls = 0

    def dev(handle: int) -> FakeDevice:
        device = devices[handle]
        if device.lost:
            device.calls_after_lost += 1
            raise FakeGpuIsLost()
        return device

    def init() -> None:
        if init_error is not None:
            raise FakeNVMLError(init_error)

    def shutdown() -> None:
        nvml.shutdown_calls += 1

    def energy(h: int) -> int:
        if not dev(h).energy_supported:
            raise FakeNVMLError(3)
        return dev(h).energy_mj

    class MetricsGet:
        def __init__(self) -> None:
            self.metrics = [types.SimpleNamespace(metricId=0, nvmlReturn=0, value=0.0)]

    def metrics_get(request: MetricsGet) -> MetricsGet:
        assert request.metrics[0].metricId == 10 and request.sample1 is not request.sample2
        request.metrics[0].value = request.sample2.dram_pct  # the newer sample's value
        return request

    def sample_get(h: int, sample: types.SimpleNamespace) -> types.SimpleNamespace:
        sample.dram_pct = dev(h).dram_pct
        return sample

    nvml.nvmlInit = init
    nvml.nvmlShutdown = shutdown
    nvml.nvmlDeviceGetCount = lambda: len(devices)
    nvml.nvmlSystemGetDriverVersion = lambda: "550.54.15"

    def handle_by_index(i: int) -> int:
        if devices[i].missing_at_start:
            raise FakeGpuIsLost()
        return i

    nvml.nvmlDeviceGetHandleByIndex = handle_by_index
    nvml.nvmlDeviceGetName = lambda h: "NVIDIA H100 80GB HBM3"
    nvml.nvmlDeviceGetUUID = lambda h: f"GPU-fake-{h}"
    nvml.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(
        gpu=dev(h).util_gpu, memory=dev(h).util_mem
    )
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=dev(h).mem_used, total=80e9)
    nvml.nvmlDeviceGetPowerUsage = lambda h: dev(h).power_mw
    nvml.nvmlDeviceGetTotalEnergyConsumption = energy
    nvml.nvmlDeviceGetClockInfo = lambda h, kind: dev(h).sm_mhz if kind == 1 else dev(h).mem_mhz
    nvml.nvmlDeviceGetPcieThroughput = lambda h, c: dev(h).pcie_tx_kb if c == 0 else dev(h).pcie_rx_kb
    nvml.nvmlGpmQueryDeviceSupport = lambda h: types.SimpleNamespace(isSupportedDevice=int(dev(h).gpm))
    nvml.nvmlGpmSampleAlloc = lambda: types.SimpleNamespace(dram_pct=None)
    nvml.nvmlGpmSampleFree = lambda s: None
    nvml.nvmlGpmSampleGet = sample_get
    nvml.nvmlGpmMetricsGet = metrics_get
    nvml.c_nvmlGpmMetricsGet_t = MetricsGet
    return nvml


@pytest.fixture
def two_devices(monkeypatch):
    devices = [FakeDevice(), FakeDevice(util_gpu=5, power_mw=100_000, energy_mj=0, gpm=False)]
    nvml = make_fake_nvml(devices)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    return devices, nvml


def by_device(summaries: list[WindowSummary]) -> dict[int | None, WindowSummary]:
    return {s.device_index: s for s in summaries}


def untimed_reasons(summary: WindowSummary) -> list[str]:
    """Reasons other than sample gaps: a 2-core machine under load can delay a 10 ms tick past 20 ms,
    so tests that run the real thread check gaps only through the pure summarize_window tests."""
    return [r for r in summary.reasons if not r.startswith("sample gap")]


# ---- sampling with the fake --------------------------------------------------------------------------


def test_normal_sampling_values_and_energy(two_devices):
    devices, nvml = two_devices
    with TelemetrySampler(interval_s=INTERVAL_S, pcie_interval_s=0.05) as sampler:
        assert sampler.status.available and sampler.status.driver_version == "550.54.15"
        assert [d.gpm_supported for d in sampler.status.devices] == [True, False]
        with sampler.window("p1"):
            time.sleep(0.15)
            devices[0].util_gpu = 90  # a burst: the max must see it, the mean lies between
            devices[0].energy_mj += 7_000  # 7 J over the window on device 0
            devices[1].energy_mj += 2_500
            time.sleep(0.15)
    assert nvml.shutdown_calls == 1
    s0, s1 = by_device(sampler.window_summary("p1"))[0], by_device(sampler.window_summary("p1"))[1]
    assert untimed_reasons(s0) == [] and untimed_reasons(s1) == []
    assert s0.sample_count >= 5  # 0.3 s at 10 ms is ~30; slack for a loaded 2-core machine
    assert s0.energy_j == pytest.approx(7.0) and s1.energy_j == pytest.approx(2.5)
    assert s0.maxes["sm_busy_pct"] == 90.0 and 40.0 < s0.means["sm_busy_pct"] < 90.0
    assert s0.means["mem_busy_pct"] == 20.0
    assert s0.means["power_w"] == 250.0 and s1.means["power_w"] == 100.0  # mW -> W
    assert s0.means["mem_used_bytes"] == 10e9
    assert (s0.means["sm_clock_mhz"], s0.means["mem_clock_mhz"]) == (1980.0, 2619.0)
    assert s0.means["pcie_tx_bytes_per_s"] == 1e6 and s0.means["pcie_rx_bytes_per_s"] == 3e6  # KB/s
    assert s0.means["dram_bw_util_pct"] == 55.0  # GPM on device 0 (0.3 s window: >= 2 GPM pairs)
    assert s1.means["dram_bw_util_pct"] is None  # no GPM on device 1: missing, never 0
    assert sampler.status.devices[1].gpm_reason.startswith("GPM not supported")


def test_windows_align_with_samples(two_devices):
    devices, _ = two_devices
    with TelemetrySampler(interval_s=INTERVAL_S) as sampler:
        with sampler.window("p1"):
            time.sleep(0.05)
            devices[0].energy_mj += 1_000
        time.sleep(0.03)  # between points: samples carry no point id
        with sampler.window("p2"):
            time.sleep(0.05)
            devices[0].energy_mj += 4_000
    frame = samples_frame(sampler.samples())
    assert list(frame.columns) == list(TELEMETRY_COLUMNS)
    assert frame["point_id"].isna().sum() > 0
    for point_id, energy_j in (("p1", 1.0), ("p2", 4.0)):
        summary = by_device(sampler.window_summary(point_id))[0]
        assert summary.energy_j == pytest.approx(energy_j)
        rows = frame[(frame["point_id"] == point_id) & (frame["device_index"] == 0)]
        assert len(rows) == summary.sample_count  # tagged samples == samples inside the window
        assert rows["t_mono_s"].between(summary.begin_s, summary.end_s).all()
    p1, p2 = by_device(sampler.window_summary("p1"))[0], by_device(sampler.window_summary("p2"))[0]
    assert p1.end_s <= p2.begin_s


def test_device_disappears_mid_run(two_devices):
    devices, _ = two_devices
    with TelemetrySampler(interval_s=INTERVAL_S) as sampler:
        with sampler.window("before"):
            time.sleep(0.05)
        with sampler.window("during"):
            time.sleep(0.03)
            devices[1].lost = True  # every call on device 1 now raises NVMLError_GpuIsLost
            time.sleep(0.05)
        with sampler.window("after"):
            time.sleep(0.05)
    assert all(untimed_reasons(s) == [] for s in sampler.window_summary("before"))
    for point_id in ("during", "after"):
        s0, s1 = (
            by_device(sampler.window_summary(point_id))[0],
            by_device(sampler.window_summary(point_id))[1],
        )
        assert untimed_reasons(s0) == [] and s0.sample_count >= 3  # the other device goes on
        assert "device 1 disappeared" in s1.verdict and "GPU is lost" in s1.verdict
    assert devices[1].calls_after_lost == 1  # a lost device is not queried again
    errors = [s for s in sampler.samples() if s.error is not None]
    assert [(s.device_index, s.point_id) for s in errors] == [(1, "during")]
    assert "FakeGpuIsLost" in errors[0].error


def test_gpm_with_real_pynvml_structs(monkeypatch):
    """The GPM request is built on nvidia-ml-py's real ctypes structs (only the C calls are faked)."""
    import ctypes

    pynvml = pytest.importorskip("pynvml")
    nvml = make_fake_nvml([FakeDevice()])
    requests = []

    def metrics_get(request):
        assert (request.version, request.numMetrics) == (pynvml.NVML_GPM_METRICS_GET_VERSION, 1)
        assert request.metrics[0].metricId == pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL
        older, newer = ctypes.addressof(request.sample1.contents), ctypes.addressof(request.sample2.contents)
        assert older != newer
        requests.append((older, newer))
        request.metrics[0].nvmlReturn = 0
        request.metrics[0].value = 42.5
        return request

    nvml.c_nvmlGpmMetricsGet_t = pynvml.c_nvmlGpmMetricsGet_t
    nvml.nvmlGpmSampleAlloc = lambda: ctypes.pointer(pynvml.struct_c_nvmlGpmSample_t())
    nvml.nvmlGpmSampleGet = lambda h, sample: sample
    nvml.nvmlGpmMetricsGet = metrics_get
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    with TelemetrySampler(interval_s=INTERVAL_S) as sampler, sampler.window("p"):
        time.sleep(0.35)
    (summary,) = sampler.window_summary("p")
    assert summary.means["dram_bw_util_pct"] == 42.5 and len(requests) >= 2
    assert requests[1] == requests[0][::-1]  # ping-pong: the newer sample becomes the next pair's older


def test_device_missing_at_start_others_go_on(monkeypatch):
    devices = [FakeDevice(), FakeDevice(missing_at_start=True)]
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_nvml(devices))
    with TelemetrySampler(interval_s=INTERVAL_S) as sampler, sampler.window("p"):
        time.sleep(0.05)
    assert sampler.status.available and sampler.status.devices[1].gpm_reason == "device unavailable"
    s0, s1 = by_device(sampler.window_summary("p"))[0], by_device(sampler.window_summary("p"))[1]
    assert untimed_reasons(s0) == [] and s0.sample_count >= 3
    assert s1.sample_count == 0 and "device 1 disappeared" in s1.verdict and "GPU is lost" in s1.verdict


def test_unsupported_metric_is_missing_not_zero(monkeypatch):
    devices = [FakeDevice(energy_supported=False, gpm=False)]
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_nvml(devices))
    with TelemetrySampler(interval_s=INTERVAL_S) as sampler, sampler.window("p"):
        time.sleep(0.05)
    (summary,) = sampler.window_summary("p")
    assert untimed_reasons(summary) == [] and summary.energy_j is None and summary.means["power_w"] == 250.0
    assert all(s.energy_counter_j is None for s in sampler.samples())


def test_device_indices_out_of_range_is_user_error(two_devices):
    sampler = TelemetrySampler(interval_s=INTERVAL_S, device_indices=[0, 5])
    with pytest.raises(UserInputError, match=r"\[5\] out of range; NVML sees devices 0\.\.1"):
        sampler.start()


def test_only_selected_devices_are_sampled(two_devices):
    with TelemetrySampler(interval_s=INTERVAL_S, device_indices=[1]) as sampler, sampler.window("p"):
        time.sleep(0.03)
    assert [s.device_index for s in sampler.window_summary("p")] == [1]
    assert {s.device_index for s in sampler.samples()} == {1}


# ---- no NVML at all -----------------------------------------------------------------------------------


def _assert_no_op(sampler: TelemetrySampler, reason_part: str) -> None:
    assert not sampler.status.available and reason_part in sampler.status.reason
    (summary,) = sampler.window_summary("p")
    assert summary.device_index is None and summary.sample_count == 0 and summary.energy_j is None
    assert summary.verdict.startswith("invalid: ") and reason_part in summary.verdict
    assert sampler.samples() == []
    assert combine_summaries([summary])["telemetry_verdict"] == summary.verdict


def test_no_nvml_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    with TelemetrySampler(interval_s=INTERVAL_S) as sampler, sampler.window("p"):
        pass
    _assert_no_op(sampler, "no NVML: cannot import pynvml")


def test_no_nvml_init_failure(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_nvml([FakeDevice()], init_error=12))
    with TelemetrySampler(interval_s=INTERVAL_S) as sampler, sampler.window("p"):
        pass
    _assert_no_op(sampler, "nvmlInit failed (FakeNVMLError: NVML Shared Library Not Found)")


def test_no_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_nvml([]))
    with TelemetrySampler(interval_s=INTERVAL_S) as sampler, sampler.window("p"):
        pass
    _assert_no_op(sampler, "no GPU: NVML reports 0 devices")


def test_real_pynvml_never_crashes():
    """The installed nvidia-ml-py: on a machine without a GPU, a no-op with a reason; with one, samples."""
    with TelemetrySampler(interval_s=INTERVAL_S) as sampler, sampler.window("p"):
        time.sleep(0.05)
    summaries = sampler.window_summary("p")
    if sampler.status.available:
        assert all(s.sample_count >= 2 for s in summaries)
    else:
        assert sampler.status.reason and summaries[0].verdict.startswith("invalid: ")


def test_misuse_is_reported(two_devices):
    sampler = TelemetrySampler(interval_s=INTERVAL_S)
    with pytest.raises(RuntimeError, match="call start"), sampler.window("p"):
        pass
    with sampler:
        with sampler.window("p"):
            pass
        with pytest.raises(ValueError, match="already recorded"), sampler.window("p"):
            pass
    with pytest.raises(KeyError, match="recorded windows: p"):
        sampler.window_summary("q")
    with pytest.raises(ValueError, match="interval_s must be a positive"):
        TelemetrySampler(interval_s=0)


# ---- pure summary functions ---------------------------------------------------------------------------


def _samples(times_s: list[float], energy_j: list[float] | None = None) -> list[TelemetrySample]:
    energy_j = energy_j or [None] * len(times_s)
    return [
        TelemetrySample(0, t, 1e9 + t, "p", sm_busy_pct=10.0 * i, power_w=100.0, energy_counter_j=e)
        for i, (t, e) in enumerate(zip(times_s, energy_j, strict=True))
    ]


def test_summary_hand_worked():
    samples = _samples([0.0, 0.01, 0.02, 0.03], [100.0, 100.5, 101.0, 101.75])
    samples.append(TelemetrySample(1, 0.01, 0.0, "p", power_w=999.0))  # another device: ignored
    summary = summarize_window(samples, "p", 0, 0.0, 0.03, interval_s=0.01)
    assert summary.verdict == "valid" and summary.sample_count == 4
    assert summary.energy_j == pytest.approx(1.75)
    assert summary.means["sm_busy_pct"] == pytest.approx(15.0) and summary.maxes["sm_busy_pct"] == 30.0
    assert summary.means["power_w"] == 100.0 and summary.means["mem_busy_pct"] is None
    row = summary.as_row()
    assert row["verdict"] == "valid" and row["sm_busy_pct_max"] == 30.0
    assert {f"{m}_mean" for m in METRICS} <= set(row)


def test_summary_gap_and_too_few_samples():
    gap = summarize_window(_samples([0.0, 0.01, 0.02, 0.06, 0.07]), "p", 0, 0.0, 0.07, interval_s=0.01)
    assert gap.verdict == "invalid: sample gap 40.0 ms > 2 x interval 10.0 ms"
    edge = summarize_window(_samples([0.0, 0.01, 0.02]), "p", 0, 0.0, 0.05, interval_s=0.01)
    assert "sample gap 30.0 ms" in edge.verdict  # the gap to the window's end counts too
    few = summarize_window(_samples([0.0, 0.01]), "p", 0, 0.0, 0.01, interval_s=0.01, min_samples=3)
    assert few.verdict == "invalid: too few samples (2 < 3)"


def test_summary_energy_counter_backwards_and_lost_device():
    back = summarize_window(_samples([0.0, 0.01, 0.02], [50.0, 51.0, 2.0]), "p", 0, 0.0, 0.02, 0.01)
    assert back.energy_j is None and "energy counter went backwards by 48.000 J" in back.verdict
    lost_later = summarize_window(_samples([0.0, 0.01, 0.02]), "p", 0, 0.0, 0.02, 0.01, lost=(5.0, "gone"))
    assert lost_later.valid  # lost after this window ended: this window is fine
    lost = summarize_window(_samples([0.0, 0.01, 0.02]), "p", 0, 0.0, 0.02, 0.01, lost=(0.015, "gone"))
    assert lost.verdict == "invalid: device 0 disappeared at t=0.015 s: gone"


def test_combine_summaries_sums_energy_and_power():
    a = summarize_window(_samples([0.0, 0.01, 0.02], [0.0, 1.0, 7.0]), "p", 0, 0.0, 0.02, 0.01)
    b_samples = [
        TelemetrySample(1, t, 0.0, "p", power_w=50.0, sm_busy_pct=80.0, energy_counter_j=e)
        for t, e in ((0.0, 10.0), (0.01, 11.0), (0.02, 13.0))
    ]
    b = summarize_window(b_samples, "p", 1, 0.0, 0.02, 0.01)
    fields = combine_summaries([a, b])
    assert fields["energy_j"] == pytest.approx(10.0) and fields["power_w_mean"] == pytest.approx(150.0)
    assert fields["sm_busy_pct_mean"] == pytest.approx((10.0 + 80.0) / 2)
    assert fields["dram_bw_util_pct_mean"] is None and fields["telemetry_verdict"] == "valid"
    few = summarize_window(_samples([0.0]), "p", 2, 0.0, 0.0, 0.01)
    combined = combine_summaries([a, few])
    assert combined["energy_j"] is None and combined["telemetry_verdict"].startswith("invalid: too few")
    assert combine_summaries([])["telemetry_verdict"] == "invalid: no telemetry windows"


def test_samples_frame_dtypes_and_empty():
    frame = samples_frame(_samples([0.0, 0.01]))
    assert dict(frame.dtypes.astype(str)) == {
        k: ("string" if v == "string" else v) for k, v in TELEMETRY_COLUMNS.items()
    }
    assert math.isnan(frame["mem_busy_pct"].iloc[0])  # missing is NaN, not 0
    assert samples_frame([]).empty and list(samples_frame([]).columns) == list(TELEMETRY_COLUMNS)
