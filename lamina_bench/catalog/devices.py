"""The device catalog: built-in devices, the local CPU and a user TOML file; lookup and device mixes.

Values and their sources: `device_table.py`. A user TOML file (see `load_catalog`) overrides or adds
devices, e.g. with your own prices.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

from lamina_bench.catalog.device_spec import TEXT_FIELDS, VALUE_FIELDS, DeviceSpec
from lamina_bench.catalog.device_table import BUILTIN
from lamina_bench.catalog.local import local_cpu
from lamina_bench.catalog.prices import DEFAULT_PRICE_SET, PriceSet, get_price_set
from lamina_bench.errors import UserInputError

ENV_DEVICES_FILE = "LAMINA_BENCH_DEVICES"  # path of a user TOML file merged over the built-in table
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # device names end up in file names (profiles)


def _builtin_spec(row: dict) -> DeviceSpec:
    """A DeviceSpec from one BUILTIN row, every non-None value sourced."""
    sources = {}
    for name in VALUE_FIELDS:
        if row.get(name) is None:
            continue
        sources[name] = row.get(f"{name}_src", row["spec_src"])
    values = {f.name: row.get(f.name) for f in fields(DeviceSpec) if f.name != "sources"}
    values |= {name: float(row[name]) for name in VALUE_FIELDS if row.get(name) is not None}
    return DeviceSpec(**values, sources=sources)


def _check_user_value(path: Path, device: str, key: str, value: object) -> None:
    """Raise UserInputError unless `value` has the right type for field `key`."""
    valid = ", ".join(TEXT_FIELDS + VALUE_FIELDS + ("source",))
    where = f"{path}: devices.{device}.{key}"
    if key in TEXT_FIELDS or key == "source":
        if not isinstance(value, str):
            raise UserInputError(f"{where} must be a string, got {value!r}")
    elif key in VALUE_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
            raise UserInputError(f"{where} must be a positive number, got {value!r}")
    else:
        raise UserInputError(f"{where}: unknown field {key!r}; valid: {valid}")


def _read_user_file(path: Path) -> dict[str, dict]:
    """The [devices.NAME] tables of a user TOML file, type-checked."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise UserInputError(f"cannot read device file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UserInputError(f"device file {path} is not UTF-8 text (a TOML file): {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserInputError(f"device file {path} is not valid TOML: {exc}") from None
    extra = set(data) - {"devices"}
    if extra or not isinstance(data.get("devices", {}), dict):
        raise UserInputError(
            f"device file {path}: only [devices.NAME] tables are allowed, got {sorted(data)}"
        )
    tables = data.get("devices", {})
    for device, table in tables.items():
        if not _NAME_RE.match(device):
            raise UserInputError(
                f"device file {path}: device name {device!r} must be letters, digits, '.', '_' or '-' "
                "(starting with a letter or digit)"
            )
        if not isinstance(table, dict):
            raise UserInputError(f"device file {path}: devices.{device} must be a table")
        for key, value in table.items():
            _check_user_value(path, device, key, value)
    return tables


def _apply_user_table(path: Path, name: str, table: dict, base: DeviceSpec | None) -> DeviceSpec:
    """`base` with the user's values (or a new device), each sourced to the user file."""
    source = f"user file {path}" + (f": {table['source']}" if "source" in table else "")
    values = {k: (float(v) if k in VALUE_FIELDS else v) for k, v in table.items() if k != "source"}
    sourced = {k: source for k in values if k in VALUE_FIELDS}
    if "usd_per_hour" in values:
        values["price_set"] = f"user file {path}"
    if base is not None:
        return replace(base, **values, sources={**base.sources, **sourced})
    if "memory_bytes" not in values:
        raise UserInputError(f"{path}: new device devices.{name} needs memory_bytes")
    new = {k: None for k in VALUE_FIELDS} | {"full_name": name, "vendor": "unknown"} | values
    return DeviceSpec(name=name, **new, sources=sourced)


def _priced(spec: DeviceSpec, price_set: PriceSet) -> DeviceSpec:
    """`spec` with its price from `price_set`, or without a price when the set has none for it."""
    price = price_set.prices.get(spec.name)
    if price is None:
        return spec
    sources = {**spec.sources, "usd_per_hour": price_set.price_source(spec.name)}
    return replace(spec, usd_per_hour=price.usd_per_hour, price_set=price_set.name, sources=sources)


def load_catalog(
    user_file: str | Path | None = None, prices: str = DEFAULT_PRICE_SET
) -> dict[str, DeviceSpec]:
    """Built-in devices priced from the price set `prices` + "CPU" (this host) + an optional user TOML
    file, keyed by catalog name. A device the set does not price has no price (None, "n/a").

    The user file (argument, else env LAMINA_BENCH_DEVICES) holds [devices.NAME] tables; a table
    whose NAME matches a catalog device (case-insensitive) overrides the fields it sets, any other
    NAME adds a device (memory_bytes required). An optional `source = "..."` string is appended to
    the "user file <path>" source of that table's values; a price set there overrides the set's.
    """
    price_set = get_price_set(prices)
    catalog = {row["name"]: _priced(_builtin_spec(row), price_set) for row in BUILTIN}
    unknown = sorted(set(price_set.prices) - set(catalog))
    if unknown:
        raise UserInputError(
            f"price set {price_set.name} prices unknown devices {unknown}; valid: {', '.join(catalog)}"
        )
    catalog["CPU"] = local_cpu()
    if user_file is None:
        user_file = os.environ.get(ENV_DEVICES_FILE) or None
    if user_file is None:
        return catalog
    if str(user_file) == "":
        raise UserInputError("the device file path is empty; give a TOML file with [devices.NAME] tables")
    path = Path(user_file)
    for name, table in _read_user_file(path).items():
        key = _lookup(name, catalog) or name
        catalog[key] = _apply_user_table(path, key, table, catalog.get(key))
    return catalog


# ---- lookup -----------------------------------------------------------------------------------------

# Alternative spellings (after _norm) -> catalog name.
_ALIASES = {
    "h100sxm": "H100",
    "h100sxm5": "H100",
    "h10080g": "H100",
    "h10080gb": "H100",
    "h100pcie80g": "H100-PCIe",
    "h200sxm": "H200",
    "h2096g": "H20",
    "a10080gb": "A100-80G",
    "a100sxm480gb": "A100-80G",
    "a100sxm80g": "A100-80G",
    "a10040gb": "A100-40G",
    "a100sxm440gb": "A100-40G",
    "4090": "RTX4090",
    "geforcertx4090": "RTX4090",
    "mi300": "MI300X",
    "instinctmi300x": "MI300X",
    "v6e": "TPU-v6e",
    "trillium": "TPU-v6e",
    "tpuv6etrillium": "TPU-v6e",
    "b200sxm": "B200",
    "host": "CPU",
}


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
