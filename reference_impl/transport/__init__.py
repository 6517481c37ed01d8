"""Message passing between Lamina workers: compute workers send q, k, v per layer and micro-batch to
attention workers and get the attention output back (arXiv 2405.01814 v2, model-attention
disaggregation).

A message is (kind, list of tensors) from one rank to another. Two implementations share one contract
(`Transport`, tested by the same suite):

- `InProcessTransport`: endpoints for threads of one process (tests, single-process runs). No header
  crosses a wire, so `header_bytes_per_message` is 0; tensors are copied on send.
- `TorchDistTransport`: over torch.distributed. gloo on CPU; NCCL on CUDA (which uses GPUDirect RDMA
  where the cluster has it). Each message is one fixed-size int64 header tensor, `HEADER_BYTES` = 480
  bytes, then its non-empty payload tensors; see wire.py for the layout.

Semantics common to both:
- `send` is asynchronous: it returns a `Handle`; the caller must not modify the tensors until
  `Handle.wait()` returns (in-process sends copy and complete at once).
- Messages from one sender to one receiver are delivered in send order per kind; kinds never mix up:
  `recv(src, "attn_out")` returns the oldest "attn_out" message from src even if a "qkv" message
  arrived before it (that one waits for its own `recv`).
- `irecv` returns at once; the message is received in the background and `RecvHandle.wait()` returns
  its tensors on the receiver's device. `recv(src, kind)` is `irecv(src, kind).wait()`.
- Byte accounting is exact: payload bytes = sum of numel * element_size of the tensors; header bytes
  are reported separately (`header_bytes_per_message` per message).
- A receive that times out stays posted: waiting on its handle again keeps waiting for the same
  message, and that message goes to it, not to a later receive. Timeouts are for failure detection.
- Time accounting (`send_s`, `recv_wait_s`) is the time the caller was blocked in `send`,
  `Handle.wait`, `recv` or `RecvHandle.wait`: the communication time a pipeline did not hide.
"""

from reference_impl.transport.endpoint import CompletedHandle, Handle, RecvHandle, Transport
from reference_impl.transport.inprocess import InProcessTransport
from reference_impl.transport.link import DEFAULT_LINK_SIZES_BYTES, LinkPoint, LinkProfile, measure_link
from reference_impl.transport.stats import KindStats, TransportStats
from reference_impl.transport.torchdist import TorchDistTransport
from reference_impl.transport.wire import (
    HEADER_BYTES,
    HEADER_LEN,
    MAX_NDIM,
    MAX_TENSORS,
    MessageHeader,
    TensorSpec,
    decode_header,
    encode_header,
    kind_id,
    pack_payload,
    payload_bytes,
    unpack_payload,
)

__all__ = [
    "DEFAULT_LINK_SIZES_BYTES",
    "HEADER_BYTES",
    "HEADER_LEN",
    "MAX_NDIM",
    "MAX_TENSORS",
    "CompletedHandle",
    "Handle",
    "InProcessTransport",
    "KindStats",
    "LinkPoint",
    "LinkProfile",
    "MessageHeader",
    "RecvHandle",
    "TensorSpec",
    "TorchDistTransport",
    "Transport",
    "TransportStats",
    "decode_header",
    "encode_header",
    "kind_id",
    "measure_link",
    "pack_payload",
    "payload_bytes",
    "unpack_payload",
]
