"""Cost arithmetic: $/hour of device mixes, tokens per dollar, and the equal-cost homogeneous baseline.

Prices come from the device catalog (`hardware.load_catalog`, overridable with a user TOML file); a
device without a price makes every cost None ("n/a"), never 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lamina_bench.catalog.device_spec import DeviceSpec
from lamina_bench.catalog.devices import DeviceMix, get_device
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
