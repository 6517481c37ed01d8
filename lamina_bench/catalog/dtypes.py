"""Storage dtypes of weights, KV caches and activations: bytes per element."""

from __future__ import annotations

from lamina_bench.errors import UserInputError

# Bytes per element of each storage dtype.
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1}


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of `dtype` (one of DTYPE_BYTES)."""
    try:
        return DTYPE_BYTES[dtype.lower()]
    except (KeyError, AttributeError):
        raise UserInputError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPE_BYTES)}") from None
