"""Wire format of a message: one fixed-size int64 header, then the payload tensors packed into one buffer.

The header (HEADER_LEN = 60 int64 values, HEADER_BYTES = 480 bytes) holds a magic number, the pair's
sequence number, the kind id, the tensor count, then per tensor slot (MAX_TENSORS = 8 of them) a dtype
code, ndim and MAX_NDIM = 5 dims. The payload is every tensor's bytes in one uint8 buffer, each tensor
starting 8-byte aligned, so a message costs two transfers whatever its tensor count.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from reference_impl.dtypes import WIRE_DTYPES

HEADER_MAGIC = 0x4C414D494E41  # "LAMINA" in ASCII: a misaligned stream fails loudly, not silently
MAX_TENSORS = 8  # tensors per message (q, k, v and a few metadata tensors)
MAX_NDIM = 5  # dimensions per tensor
_HEADER_FIXED = 4  # magic, sequence number, kind id, number of tensors
_SLOT = 2 + MAX_NDIM  # per tensor: dtype code, ndim, dims (zero padded)
HEADER_LEN = _HEADER_FIXED + MAX_TENSORS * _SLOT  # 60 int64 values
HEADER_BYTES = HEADER_LEN * 8  # 480 bytes per message on TorchDistTransport

_DTYPE_CODES = {dtype: code for code, dtype in enumerate(WIRE_DTYPES.values(), start=1)}  # see dtypes.py
_CODE_DTYPES = {code: dtype for dtype, code in _DTYPE_CODES.items()}


def kind_id(kind: str) -> int:
    """Stable id of a message kind (CRC-32 of its UTF-8 name; the same in every process)."""
    if not kind:
        raise ValueError("message kind must be a non-empty string")
    return zlib.crc32(kind.encode("utf-8"))


_ALIGN_BYTES = 8  # every tensor starts at a multiple of 8 bytes of the buffer, so each view is aligned


def _padded(nbytes: int) -> int:
    return -(-nbytes // _ALIGN_BYTES) * _ALIGN_BYTES


def pack_payload(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """All tensors of a message as one contiguous uint8 buffer, so a message costs two transfers (header
    and payload) whatever its tensor count. Each tensor starts at a multiple of 8 bytes (padding, not
    counted in payload_bytes); same device as the tensors."""
    device = tensors[0].device if tensors else torch.device("cpu")
    sizes = [t.numel() * t.element_size() for t in tensors]
    buffer = torch.empty(sum(_padded(n) for n in sizes), dtype=torch.uint8, device=device)
    offset = 0
    for t, n in zip(tensors, sizes, strict=True):
        if n:
            buffer[offset : offset + n] = t.contiguous().reshape(-1).view(torch.uint8)
        offset += _padded(n)
    return buffer


def unpack_payload(
    buffer: torch.Tensor, specs: Sequence[TensorSpec], sizes: Sequence[int]
) -> list[torch.Tensor]:
    """Inverse of pack_payload: views of `buffer` with the dtypes and shapes of `specs`."""
    out, offset = [], 0
    for spec, size in zip(specs, sizes, strict=True):
        out.append(buffer[offset : offset + size].view(spec.dtype).reshape(spec.shape))
        offset += _padded(size)
    return out


def packed_bytes(sizes: Sequence[int]) -> int:
    """Length of the buffer pack_payload makes for tensors of these byte sizes."""
    return sum(_padded(n) for n in sizes)


def payload_bytes(tensors: Sequence[torch.Tensor]) -> int:
    """Exact payload of a message: sum of numel * element_size."""
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class TensorSpec:
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class MessageHeader:
    seq: int  # per (sender, receiver) pair, from 0: checks that no message was lost or reordered
    kind_id: int
    specs: tuple[TensorSpec, ...]


def check_message(tensors: Sequence[torch.Tensor]) -> None:
    """Raises ValueError if the tensors cannot travel in one message."""
    if len(tensors) > MAX_TENSORS:
        raise ValueError(f"a message holds at most {MAX_TENSORS} tensors, got {len(tensors)}")
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"message item {i} is a {type(t).__name__}, not a torch.Tensor")
        if t.dtype not in _DTYPE_CODES:
            valid = ", ".join(str(d).removeprefix("torch.") for d in _DTYPE_CODES)
            raise ValueError(f"message tensor {i} has dtype {t.dtype}; valid: {valid}")
        if t.dim() > MAX_NDIM:
            raise ValueError(f"message tensor {i} has {t.dim()} dims; at most {MAX_NDIM} are supported")


def encode_header(seq: int, kind: str, tensors: Sequence[torch.Tensor]) -> list[int]:
    """Header values (HEADER_LEN int64s): magic, seq, kind id, n, then per tensor slot
    [dtype code, ndim, dim_0 .. dim_{MAX_NDIM-1}] with unused dims and slots zero."""
    check_message(tensors)
    values = [HEADER_MAGIC, seq, kind_id(kind), len(tensors)]
    for t in tensors:
        dims = list(t.shape) + [0] * (MAX_NDIM - t.dim())
        values += [_DTYPE_CODES[t.dtype], t.dim(), *dims]
    return values + [0] * (HEADER_LEN - len(values))


def decode_header(values: Sequence[int]) -> MessageHeader:
    """Inverse of encode_header; ValueError on anything a correct sender cannot produce."""
    if len(values) != HEADER_LEN or values[0] != HEADER_MAGIC:
        raise ValueError("header magic or length mismatch: the message stream is misaligned")
    seq, kid, n = values[1], values[2], values[3]
    if not 0 <= n <= MAX_TENSORS:
        raise ValueError(f"header announces {n} tensors (0..{MAX_TENSORS} possible)")
    specs = []
    for i in range(n):
        code, ndim, *dims = values[_HEADER_FIXED + i * _SLOT : _HEADER_FIXED + (i + 1) * _SLOT]
        if code not in _CODE_DTYPES or not 0 <= ndim <= MAX_NDIM or min(dims[:ndim], default=0) < 0:
            raise ValueError(f"header slot {i} is invalid (dtype code {code}, ndim {ndim}, dims {dims})")
        specs.append(TensorSpec(_CODE_DTYPES[code], tuple(dims[:ndim])))
    return MessageHeader(seq=seq, kind_id=kid, specs=tuple(specs))
