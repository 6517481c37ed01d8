"""What every command shares: the one-line-error parser, and the options the user actually gave."""

from __future__ import annotations

import argparse
import sys

from lamina_bench.catalog.devices import DeviceSpec, load_catalog
from lamina_bench.catalog.prices import DEFAULT_PRICE_SET, price_sets


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage + exits 2; keep it to one line
        print(f"lamina-bench: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def add_catalog_arguments(parser: argparse.ArgumentParser, default_prices: str = DEFAULT_PRICE_SET) -> None:
    """--prices (one named price set for every device) and --devices-file (a user TOML file)."""
    parser.add_argument(
        "--prices",
        help=f"price set that prices every device (default {default_prices}; valid: {', '.join(price_sets())})",
    )
    parser.add_argument("--devices-file", help="TOML file overriding or adding devices (prices, specs)")


def catalog_of(args: argparse.Namespace, default_prices: str = DEFAULT_PRICE_SET) -> dict[str, DeviceSpec]:
    """The device catalog priced from the --prices set (default `default_prices`), with --devices-file."""
    return load_catalog(args.devices_file, prices=args.prices or default_prices)


def given(args: argparse.Namespace, **names: str) -> dict:
    """{parameter: value} for the options the user gave (defaults live in the called function only)."""
    return {param: getattr(args, opt) for param, opt in names.items() if getattr(args, opt) is not None}
