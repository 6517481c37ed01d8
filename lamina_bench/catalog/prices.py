"""Price sets: device prices from ONE provider or ONE consistent method on ONE date, each with its source.

A comparison of costs is only meaningful within one set (an estimate, a list price and a 3-year rental
rate are not comparable), so every command that shows money prices every device from one named set,
names that set in its output, and leaves a device without a price in it out, with the reason. The sets
are `lamina_bench/data/prices/<name>.toml` (method and caveats: that folder's README):

    name = "coreweave-ondemand-2026-09-20"   # = the file name
    provider = "..."                          # who set the prices
    date = "2026-09-20"                       # when they held (YYYY-MM or YYYY-MM-DD)
    method = "..."                            # how a per-GPU-hour price was derived
    source = "..."                            # where the list was read
    [prices.H100]                             # a catalog device name
    usd_per_hour = 6.155
    source = "..."                            # this price's own source and derivation
    note = "..."                              # optional
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import MappingProxyType

from lamina_bench.errors import UserInputError

PRICES_DIR = Path(__file__).resolve().parents[1] / "data" / "prices"
DEFAULT_PRICE_SET = "coreweave-ondemand-2026-09-20"  # the broadest single-provider on-demand list shipped
PAPER_PRICE_SET = "paper-2025"  # the Lamina paper's H100 / H20 prices, for its comparisons
_DATE = re.compile(r"^\d{4}-\d{2}(-\d{2})?$")
_SET_KEYS = ("name", "provider", "date", "method", "source", "prices")
_PRICE_KEYS = ("usd_per_hour", "source", "note")


@dataclass(frozen=True)
class Price:
    usd_per_hour: float
    source: str
    note: str | None = None


@dataclass(frozen=True)
class PriceSet:
    name: str
    provider: str
    date: str
    method: str
    source: str
    prices: Mapping[str, Price] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prices", MappingProxyType(dict(self.prices)))

    def label(self) -> str:
        """How outputs name the set: "<name> (<provider>, <date>)"."""
        return f"{self.name} ({self.provider}, {self.date})"

    def price_source(self, device: str) -> str:
        """The source line a device's price carries in the catalog."""
        price = self.prices[device]
        return f"price set {self.name}: {price.source}; {self.date}"

    def missing_reason(self, device: str) -> str:
        return f"{device} has no price in price set {self.name} ({self.provider}, {self.date})"


def _fail(path: Path, what: str) -> UserInputError:
    return UserInputError(f"price set {path}: {what}")


def _text(path: Path, table: Mapping, key: str, where: str = "") -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, f"{where}'{key}' must be a non-empty string")
    return value


def _price(path: Path, device: str, table: object) -> Price:
    where = f"prices.{device}."
    if not isinstance(table, dict):
        raise _fail(path, f"prices.{device} must be a table")
    unknown = sorted(set(table) - set(_PRICE_KEYS))
    if unknown:
        raise _fail(path, f"{where}{unknown[0]} is not a price field; valid: {', '.join(_PRICE_KEYS)}")
    value = table.get("usd_per_hour")
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise _fail(path, f"{where}usd_per_hour must be a positive number, got {value!r}")
    note = table.get("note")
    if note is not None and not isinstance(note, str):
        raise _fail(path, f"{where}note must be a string")
    return Price(float(value), _text(path, table, "source", where), note)


def read_price_set(path: str | Path) -> PriceSet:
    """One price set file, checked: every field present, every price positive and sourced."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(path, f"cannot read it ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise _fail(path, f"not valid TOML ({exc})") from None
    unknown = sorted(set(data) - set(_SET_KEYS))
    if unknown:
        raise _fail(path, f"unknown key '{unknown[0]}'; valid: {', '.join(_SET_KEYS)}")
    name = _text(path, data, "name")
    if name != path.stem:
        raise _fail(path, f"name {name!r} must equal the file name {path.stem!r}")
    date = _text(path, data, "date")
    if not _DATE.match(date):
        raise _fail(path, f"date {date!r} must be YYYY-MM or YYYY-MM-DD")
    prices = data.get("prices")
    if not isinstance(prices, dict) or not prices:
        raise _fail(path, "needs at least one [prices.DEVICE] table")
    fields = {k: _text(path, data, k) for k in ("provider", "method", "source")}
    return PriceSet(name=name, date=date, **fields, prices={d: _price(path, d, t) for d, t in prices.items()})


@cache
def price_sets(folder: Path = PRICES_DIR) -> dict[str, PriceSet]:
    """Every shipped price set, by name."""
    return {p.stem: read_price_set(p) for p in sorted(folder.glob("*.toml"))}


def get_price_set(name: str) -> PriceSet:
    """The price set called `name`; UserInputError naming the valid ones otherwise."""
    sets = price_sets()
    if name not in sets:
        raise UserInputError(f"unknown price set {name!r}; valid: {', '.join(sets)}")
    return sets[name]
