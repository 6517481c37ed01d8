"""Checking one block of a sweep spec: known keys, types, defaults, positive integers, system names."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from lamina_bench.errors import UserInputError
from lamina_bench.model.system import DENSE_SYSTEMS, SYSTEMS


def check_keys(table: Mapping[str, Any], valid: Iterable[str], where: str) -> None:
    valid = tuple(valid)
    for key in table:
        if key not in valid:
            raise UserInputError(f"{where}: unknown key '{key}'; valid: {', '.join(valid)}")


def with_defaults(
    block: Mapping[str, Any],
    schema: Mapping[str, tuple[type, Any]],
    where: str,
    may_be_empty: Iterable[str] = (),
    choices: Callable[[str], str] | None = None,
) -> dict:
    """The block's values with the schema's defaults filled in and types checked; a list key given as a
    scalar becomes a one-element list. A list given in the block must not be empty (the error names
    `choices(key)`, the valid values); a default may be empty only for keys named in `may_be_empty`."""
    check_keys(block, schema, where)
    may_be_empty = set(may_be_empty)
    out: dict[str, Any] = {"_where": where}
    for key, (kind, default) in schema.items():
        value = block.get(key, default)
        if value is None:
            raise UserInputError(f"{where}: '{key}' is required")
        if kind is list and not isinstance(value, list):
            value = [value]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise UserInputError(f"{where}: '{key}' must be {kind.__name__}, got {value!r}")
        if kind is float and not math.isfinite(value):
            raise UserInputError(f"{where}: '{key}' must be a finite number, got {value!r}")
        if kind is list and not value and (key in block or key not in may_be_empty):
            valid = choices(key) if choices else ""
            hint = f"; give at least one (valid: {valid})" if valid else "; give at least one value"
            raise UserInputError(f"{where}: '{key}' is empty{hint}")
        out[key] = list(value) if kind is list else value
    return out


def check_systems(systems: list, where: str, measured: bool = False) -> None:
    """UserInputError naming the valid systems: every modeled one, or those the reference runtime runs."""
    valid = DENSE_SYSTEMS if measured else SYSTEMS
    for s in systems:
        if s not in valid:
            raise UserInputError(f"{where}: unknown system {s!r}; valid: {', '.join(valid)}")


def positive_ints(values: list, key: str, where: str, zero_ok: bool = False) -> None:
    low = 0 if zero_ok else 1
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            what = "integers >= 0" if zero_ok else "positive integers"
            raise UserInputError(f"{where}: '{key}' entries must be {what}, got {v!r}")


def positive_numbers(values: list, key: str, where: str) -> None:
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0 or v == float("inf"):
            raise UserInputError(f"{where}: '{key}' entries must be positive numbers, got {v!r}")
