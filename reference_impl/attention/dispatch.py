"""The one switch point between the Triton paged decode kernel and the torch reference.

triton is imported lazily, on the first call that needs it, so that this package imports on machines
without triton; triton_decode sets TRITON_INTERPRET=1 before defining its kernels when no GPU exists.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

import torch

from reference_impl.attention.torch_decode import decode_attention_torch
from reference_impl.errors import ConfigError

BACKENDS = ("auto", "torch", "triton")


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _triton_decode_module() -> ModuleType:
    try:
        return importlib.import_module("reference_impl.attention.triton_decode")
    except ImportError as exc:
        raise ConfigError(
            f"backend 'triton' needs the triton package, which failed to import: {exc}"
        ) from exc


def resolve_backend(backend: str, device: torch.device) -> str:
    """'torch' or 'triton': auto means Triton on CUDA tensors when triton is installed, torch otherwise."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown attention backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    return backend


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    backend: str = "auto",
    num_splits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paged decode attention -> (out (B,Hq,D) in q's dtype, lse (B,Hq) fp32); see decode_attention_ref.

    backend: auto | torch | triton (on CPU tensors triton runs in its interpreter: slow, for tests).
    num_splits only applies to the Triton kernel.
    """
    if resolve_backend(backend, q.device) == "torch":
        return decode_attention_torch(q, k_cache, v_cache, block_tables, seq_lens, scale)
    kernel = _triton_decode_module().decode_attention_triton
    return kernel(q, k_cache, v_cache, block_tables, seq_lens, scale, num_splits=num_splits)
