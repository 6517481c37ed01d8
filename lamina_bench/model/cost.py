"""Cost arithmetic: $/hour of device mixes, tokens per dollar, and the equal-cost homogeneous baseline.

Prices come from one named price set (`catalog/prices.py`) through the device catalog
(`catalog.devices.load_catalog(prices=...)`, overridable with a user TOML file); a device without a price
makes every cost None ("n/a"), never 0. A comparison never mixes price sets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lamina_bench.catalog.device_spec import DeviceSpec
from lamina_bench.catalog.devices import DeviceMix, get_device
from lamina_bench.catalog.prices import get_price_set, price_sets
from lamina_bench.errors import UserInputError

# Tensor-parallel degrees the homogeneous baseline may use (one node of up to 8 devices).
TP_COUNTS = (1, 2, 4, 8)


def mixes_cost_usd_per_hour(*mixes: DeviceMix | None) -> float | None:
    """Summed rental price of the given mixes (None entries skipped); None if any device has no price."""
    total = 0.0
    for mix in mixes:
        if mix is None:
            continue
        cost = mix.cost_usd_per_hour
        if cost is None:
            return None
        total += cost
    return total


def price_set_label(*mixes: DeviceMix | None) -> str | None:
    """The price set that priced these mixes: one name, "a + b" if they differ (a user file), None if none."""
    names = list(dict.fromkeys(m.device.price_set for m in mixes if m is not None and m.device.price_set))
    return " + ".join(names) or None


def require_prices(price_set: str, *mixes: DeviceMix | None) -> None:
    """UserInputError (one line) when a device of the mixes has no price in the price set it was priced
    from, naming the devices that set prices and the other sets."""
    for mix in mixes:
        if mix is not None and mix.device.usd_per_hour is None:
            chosen = get_price_set(price_set)
            raise UserInputError(
                f"{chosen.missing_reason(mix.device.name)}; it prices {', '.join(chosen.prices)}; choose "
                f"another --prices (valid: {', '.join(price_sets())}) or give usd_per_hour in a --devices-file"
            )


def tokens_per_usd(throughput_tok_per_s: float, cost_usd_per_hour: float | None) -> float | None:
    """Tokens one dollar buys at this throughput and price."""
    if cost_usd_per_hour is None or cost_usd_per_hour <= 0:
        return None
    return throughput_tok_per_s * 3600.0 / cost_usd_per_hour


def usd_per_mtok(throughput_tok_per_s: float, cost_usd_per_hour: float | None) -> float | None:
    """Dollars per million generated tokens."""
    if cost_usd_per_hour is None or throughput_tok_per_s <= 0:
        return None
    return cost_usd_per_hour / (throughput_tok_per_s * 3600.0) * 1e6


def equal_cost_homogeneous(
    compute: DeviceMix,
    attention: DeviceMix,
    device: str | DeviceSpec | None = None,
    catalog: Mapping[str, DeviceSpec] | None = None,
    counts: Sequence[int] = TP_COUNTS,
) -> DeviceMix:
    """The homogeneous mix (of `device`, default the compute device) whose price is closest to the Lamina mix.

    Paper (arXiv 2405.01814 v2): 1xH100 + 2xH20 ($20.32/h) ~ 2xH100 ($22.12/h);
    2xH100 + 4xH20 ($40.64/h) ~ 4xH100 ($44.24/h). Ties go to the smaller count.
    """
    target = mixes_cost_usd_per_hour(compute, attention)
    if target is None:
        raise UserInputError(f"no price for {compute} + {attention}; add usd_per_hour to the device catalog")
    if device is None:
        spec = compute.device
    elif isinstance(device, DeviceSpec):
        spec = device
    else:
        spec = get_device(device, catalog)
    if spec.usd_per_hour is None:
        raise UserInputError(f"device {spec.name} has no price (usd_per_hour) in the catalog")
    best = min(counts, key=lambda n: (abs(n * spec.usd_per_hour - target), n))
    return DeviceMix(best, spec)
