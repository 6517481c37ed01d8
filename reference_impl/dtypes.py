"""Names of the torch dtypes the reference implementation uses: the one table of them.

`DTYPES` holds the dtypes a model and its KV cache may run in (the `--dtype` option); `WIRE_DTYPES`
every dtype a message between workers may carry. The order of `WIRE_DTYPES` is the transport's wire
format (a tensor's dtype travels as its 1-based index in this table), so new dtypes go at the end.
"""

from __future__ import annotations

import torch

WIRE_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}

DTYPES: dict[str, torch.dtype] = {name: WIRE_DTYPES[name] for name in ("fp32", "fp16", "bf16")}
