"""Device catalog: paper values, sources on every number, user TOML overrides, lookups, local detection."""

import functools
import re
from types import SimpleNamespace

import pytest

from lamina_bench.catalog.device_spec import DeviceSpec
from lamina_bench.catalog.devices import ENV_DEVICES_FILE, DeviceMix, get_device, load_catalog, parse_mix
from lamina_bench.catalog.devices import parse_mix as _parse_mix
from lamina_bench.catalog.local import local_devices, match_cuda_name
from lamina_bench.catalog.prices import get_price_set
from lamina_bench.errors import UserInputError

REQUIRED = [
    "H100",
    "H200",
    "H20",
    "A100-80G",
    "L40S",
    "L20",
    "RTX4090",
    "A10",
    "B200",
    "MI300X",
    "TPU-v6e",
    "CPU",
]
VALUE_FIELDS = [
    "bf16_flops_per_s",
    "memory_bytes",
    "mem_bandwidth_bytes_per_s",
    "power_w",
    "intra_link_bytes_per_s",
    "nic_gbps",
    "usd_per_hour",
]


@pytest.fixture(autouse=True)
def _no_user_file(monkeypatch):
    monkeypatch.delenv(ENV_DEVICES_FILE, raising=False)


def test_catalog_has_required_devices():
    catalog = load_catalog()
    assert set(REQUIRED) <= set(catalog)
    for key, spec in catalog.items():
        assert spec.name == key


def test_paper_table_values():
    paper = load_catalog(prices="paper-2025")
    h100, h20 = get_device("H100", paper), get_device("H20", paper)
    assert (h100.bf16_flops_per_s, h100.memory_bytes, h100.mem_bandwidth_bytes_per_s) == (
        989e12,
        80e9,
        3.35e12,
    )
    assert (h100.power_w, h100.nic_gbps, h100.usd_per_hour) == (700, 400, 11.06)
    assert (h20.bf16_flops_per_s, h20.memory_bytes, h20.mem_bandwidth_bytes_per_s) == (148e12, 96e9, 4.0e12)
    assert (h20.power_w, h20.nic_gbps, h20.usd_per_hour) == (400, 400, 4.63)
    assert (
        "2405.01814" in h20.sources["usd_per_hour"] and "price set paper-2025" in h20.sources["usd_per_hour"]
    )
    assert "GCP" in h100.sources["usd_per_hour"]
    assert (h100.price_set, h20.price_set) == ("paper-2025", "paper-2025")


def test_prices_come_from_one_named_set():
    """Every priced device of a catalog is priced by the chosen set; devices the set lacks have no price."""
    for name in ("paper-2025", "coreweave-ondemand-2026-09-20", "gcp-ondemand-2026-07-30"):
        catalog = load_catalog(prices=name)
        priced = {d.name for d in catalog.values() if d.usd_per_hour is not None}
        assert priced == set(get_price_set(name).prices)
        assert {d.price_set for d in catalog.values() if d.usd_per_hour is not None} == {name}
    assert load_catalog()["H20"].usd_per_hour is None  # the default set has no H20 price
    with pytest.raises(UserInputError, match="unknown price set 'nope'; valid: .*paper-2025"):
        load_catalog(prices="nope")


def test_every_value_has_a_dated_source():
    for spec in load_catalog().values():
        for name in VALUE_FIELDS:
            if getattr(spec, name) is not None:
                source = spec.sources[name]
                assert ";" in source and re.search(r"20\d\d", source), (spec.name, name, source)


def test_unknowns_stay_none():
    assert get_device("L20").usd_per_hour is None  # no rental price published
    assert get_device("TPU-v6e").power_w is None
    cpu = get_device("CPU")
    assert cpu.bf16_flops_per_s is None and cpu.mem_bandwidth_bytes_per_s is None
    assert cpu.memory_bytes > 0 and "memory_bytes" in cpu.sources


def test_lookup_case_insensitive_aliases_and_errors():
    assert get_device("h100").name == "H100"
    assert get_device("h100-sxm").name == "H100"
    assert get_device("a100_80g").name == "A100-80G"
    assert get_device("tpu-v6e").name == "TPU-v6e"
    assert get_device("rtx-4090").name == "RTX4090"
    with pytest.raises(UserInputError, match=r"unknown device 'H999'; valid: H100, .*H20"):
        get_device("H999")


def test_mix_parse_cost_and_str():
    paper = load_catalog(prices="paper-2025")
    parse_mix = functools.partial(_parse_mix, catalog=paper)
    mix = parse_mix("2xH100")
    assert (mix.count, mix.device.name, str(mix)) == (2, "H100", "2xH100")
    assert mix.cost_usd_per_hour == pytest.approx(22.12)
    assert str(parse_mix("4xh20")) == "4xH20"
    assert str(parse_mix("1xA100-80G")) == "1xA100-80G"
    assert parse_mix("4xH20").cost_usd_per_hour == pytest.approx(18.52)
    assert parse_mix("1xL20").cost_usd_per_hour is None
    # The paper's LLaMA-33B pairing at its prices: 1xH100 + 2xH20 = 11.06 + 9.26 (vs 2xH100 = 22.12).
    assert parse_mix("1xH100").cost_usd_per_hour + parse_mix("2xH20").cost_usd_per_hour == pytest.approx(
        20.32
    )
    for bad in ["H100", "0xH100", "2x", "x2H100", "2xH999", ""]:
        with pytest.raises(UserInputError):
            parse_mix(bad)
    with pytest.raises(UserInputError, match="positive int"):
        DeviceMix(0, get_device("H100"))


def test_specs_are_frozen_and_hashable():
    h100 = get_device("H100")
    assert {h100, DeviceMix(2, h100)}
    with pytest.raises(TypeError):
        h100.sources["usd_per_hour"] = "x"  # type: ignore[index]


def test_spec_validation():
    base = dict(
        name="X",
        full_name="x",
        vendor="v",
        bf16_flops_per_s=None,
        memory_bytes=1e9,
        mem_bandwidth_bytes_per_s=None,
        power_w=None,
        intra_link_bytes_per_s=None,
        nic_gbps=None,
        usd_per_hour=None,
    )
    DeviceSpec(**base, sources={"memory_bytes": "test; 2025"})
    with pytest.raises(UserInputError, match="no source"):
        DeviceSpec(**base)
    with pytest.raises(UserInputError, match="positive number"):
        DeviceSpec(**(base | {"power_w": -1}), sources={"memory_bytes": "t", "power_w": "t"})


def test_user_file_overrides_and_adds(tmp_path, monkeypatch):
    path = tmp_path / "devices.toml"
    path.write_text(
        '[devices.h100]\nusd_per_hour = 2.5\nsource = "my contract; 2026-01"\n\n'
        '[devices.MyGPU]\nfull_name = "My GPU"\nmemory_bytes = 48e9\nmem_bandwidth_bytes_per_s = 1e12\n'
    )
    catalog = load_catalog(path)
    assert catalog["H100"].usd_per_hour == 2.5
    assert catalog["H100"].sources["usd_per_hour"] == f"user file {path}: my contract; 2026-01"
    assert catalog["H100"].bf16_flops_per_s == 989e12  # untouched fields keep the built-in values
    assert catalog["MyGPU"].memory_bytes == 48e9 and catalog["MyGPU"].bf16_flops_per_s is None
    assert str(parse_mix("3xmygpu", catalog)) == "3xMyGPU"
    monkeypatch.setenv(ENV_DEVICES_FILE, str(path))
    assert get_device("H100").usd_per_hour == 2.5


@pytest.mark.parametrize(
    "text, message",
    [
        ("[devices.H100\n", "not valid TOML"),
        ("[devices.H100]\nflops = 1\n", r"unknown field 'flops'; valid: .*bf16_flops_per_s"),
        ('[devices.H100]\nusd_per_hour = "cheap"\n', r"devices.H100.usd_per_hour must be a positive number"),
        ("[devices.H100]\nvendor = 3\n", "must be a string"),
        ("[devices.New]\nfull_name = 'n'\n", "needs memory_bytes"),
        ("[gpus.H100]\nx = 1\n", r"only \[devices.NAME\] tables"),
    ],
)
def test_user_file_errors(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UserInputError, match=message):
        load_catalog(path)


def test_missing_user_file(tmp_path):
    with pytest.raises(UserInputError, match="cannot read device file"):
        load_catalog(tmp_path / "none.toml")


@pytest.mark.parametrize(
    "torch_name, key",
    [
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H100 PCIe", "H100-PCIe"),
        ("NVIDIA H100 NVL", None),
        ("NVIDIA H200", "H200"),
        ("NVIDIA H20", "H20"),
        ("NVIDIA A100-SXM4-80GB", "A100-80G"),
        ("NVIDIA A100 80GB PCIe", None),
        ("NVIDIA A10", "A10"),
        ("NVIDIA A10G", None),
        ("NVIDIA L4", "L4"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA GeForce RTX 4090", "RTX4090"),
        ("AMD Instinct MI300X", "MI300X"),
    ],
)
def test_match_cuda_name(torch_name, key):
    assert match_cuda_name(torch_name) == key


def test_local_devices_cpu_only_without_cuda(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    devices = local_devices(load_catalog())
    assert [d.name for d in devices] == ["CPU"]
    assert devices[0].full_name and devices[0].memory_bytes > 1e8


def test_local_devices_with_fake_cuda(monkeypatch):
    torch = pytest.importorskip("torch")
    props = [
        SimpleNamespace(name="NVIDIA H200", total_memory=150_754_820_096),
        SimpleNamespace(name="NVIDIA Mystery 9000", total_memory=8e9),
    ]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props[i])
    cpu, h200, other = local_devices(load_catalog())
    assert cpu.name == "CPU"
    assert h200.name == "H200" and h200.bf16_flops_per_s == 989e12
    assert h200.memory_bytes == 150_754_820_096 and "torch.cuda" in h200.sources["memory_bytes"]
    assert (
        other.name == "NVIDIA-Mystery-9000" and other.bf16_flops_per_s is None and other.usd_per_hour is None
    )
