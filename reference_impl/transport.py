"""Message passing between Lamina workers: compute workers send q, k, v per layer and micro-batch to
attention workers and get the attention output back (arXiv 2405.01814 v2, model-attention
disaggregation).

A message is (kind, list of tensors) from one rank to another. Two implementations share one contract
(`Transport`, tested by the same suite):

- `InProcessTransport`: endpoints for threads of one process (tests, single-process runs). No header
  crosses a wire, so `header_bytes_per_message` is 0; tensors are copied on send.
- `TorchDistTransport`: over torch.distributed. gloo on CPU; NCCL on CUDA (which uses GPUDirect RDMA
  where the cluster has it). Each message is one fixed-size int64 header tensor, `HEADER_BYTES` = 480
  bytes, then its non-empty payload tensors; see `encode_header` for the layout.

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

from __future__ import annotations

import datetime
import math
import statistics
import threading
import time
import zlib
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
import torch.distributed as dist

# ---- wire format ---------------------------------------------------------------------------------

HEADER_MAGIC = 0x4C414D494E41  # "LAMINA" in ASCII: a misaligned stream fails loudly, not silently
MAX_TENSORS = 8  # tensors per message (q, k, v and a few metadata tensors)
MAX_NDIM = 5  # dimensions per tensor
_HEADER_FIXED = 4  # magic, sequence number, kind id, number of tensors
_SLOT = 2 + MAX_NDIM  # per tensor: dtype code, ndim, dims (zero padded)
HEADER_LEN = _HEADER_FIXED + MAX_TENSORS * _SLOT  # 60 int64 values
HEADER_BYTES = HEADER_LEN * 8  # 480 bytes per message on TorchDistTransport

_DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 1,
    torch.float16: 2,
    torch.bfloat16: 3,
    torch.float64: 4,
    torch.int64: 5,
    torch.int32: 6,
    torch.int16: 7,
    torch.int8: 8,
    torch.uint8: 9,
    torch.bool: 10,
}
_CODE_DTYPES = {code: dtype for dtype, code in _DTYPE_CODES.items()}
_TAG = 0  # one tag for everything: per-pair FIFO order plus the kind id in the header demultiplex


def kind_id(kind: str) -> int:
    """Stable id of a message kind (CRC-32 of its UTF-8 name; the same in every process)."""
    if not kind:
        raise ValueError("message kind must be a non-empty string")
    return zlib.crc32(kind.encode("utf-8"))


_ELEMENT_SIZES = {dtype: torch.empty(0, dtype=dtype).element_size() for dtype in _DTYPE_CODES}


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


# ---- statistics ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KindStats:
    """Traffic of one message kind at one endpoint. Bytes are exact; times are caller-blocked seconds."""

    messages_sent: int = 0
    payload_bytes_sent: int = 0
    header_bytes_sent: int = 0
    send_s: float = 0.0  # blocked in send() and Handle.wait()
    messages_received: int = 0
    payload_bytes_received: int = 0
    header_bytes_received: int = 0
    recv_wait_s: float = 0.0  # blocked in recv() and RecvHandle.wait()

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < 0:
                raise ValueError(f"KindStats.{name} must be >= 0, got {value}")

    def plus(self, **deltas: float) -> KindStats:
        return KindStats(**{k: v + deltas.get(k, 0) for k, v in vars(self).items()})


@dataclass(frozen=True)
class TransportStats:
    """Per-kind traffic of one endpoint (a snapshot)."""

    by_kind: dict[str, KindStats] = field(default_factory=dict)

    def kind(self, name: str) -> KindStats:
        """Stats of one kind (all zero if it never travelled)."""
        return self.by_kind.get(name, KindStats())

    def total(self) -> KindStats:
        out = KindStats()
        for s in self.by_kind.values():
            out = out.plus(**vars(s))
        return out


class _StatsRecorder:
    """Thread-safe accumulator behind `stats` (sends, background receives and waits all update it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_kind: dict[str, KindStats] = {}

    def add(self, kind: str, **deltas: float) -> None:
        with self._lock:
            self._by_kind[kind] = self._by_kind.get(kind, KindStats()).plus(**deltas)

    def snapshot(self) -> TransportStats:
        with self._lock:
            return TransportStats(dict(self._by_kind))

    def reset(self) -> None:
        with self._lock:
            self._by_kind.clear()


# ---- handles -------------------------------------------------------------------------------------


class Handle(Protocol):
    def wait(self) -> None: ...
    def done(self) -> bool: ...


class CompletedHandle:
    """Handle of a send that finished inside send()."""

    def wait(self) -> None:
        return None

    def done(self) -> bool:
        return True


class _WorkHandle:
    """Handle over torch.distributed Work objects; keeps the sent tensors alive until they are sent."""

    def __init__(self, works: list, keepalive: list[torch.Tensor], on_wait: Callable[[float], None]):
        self._works = works
        self._keepalive = keepalive
        self._on_wait = on_wait
        self._lock = threading.Lock()

    def wait(self, timeout_s: float | None = None) -> None:
        """Blocks until sent; with timeout_s, raises (RuntimeError) if a part is not sent in time."""
        with self._lock:
            if self._works is None:
                return
            t0 = time.perf_counter()
            for work in self._works:
                if timeout_s is None:
                    work.wait()
                else:
                    work.wait(datetime.timedelta(seconds=timeout_s))
            self._works, self._keepalive = None, []
            self._on_wait(time.perf_counter() - t0)

    def done(self) -> bool:
        works = self._works
        return works is None or all(w.is_completed() for w in works)


class RecvHandle:
    """A receive in flight; wait() returns its tensors on the receiver's device."""

    def __init__(self, future: Future, device: torch.device, on_wait: Callable[[float], None], what: str):
        self._future = future
        self._device = device
        self._on_wait = on_wait
        self._what = what  # for the timeout message, e.g. "'qkv' message from rank 1"
        self._tensors: list[torch.Tensor] | None = None

    def wait(self, timeout_s: float | None = None) -> list[torch.Tensor]:
        if self._tensors is None:
            t0 = time.perf_counter()
            try:
                tensors = self._future.result(timeout=timeout_s)
            except TimeoutError as exc:
                raise TimeoutError(f"no {self._what} within {timeout_s} s") from exc
            for t in tensors:
                if t.is_cuda:  # produced on a receive stream, consumed on the caller's
                    t.record_stream(torch.cuda.current_stream(t.device))
            self._tensors = [t.to(self._device) for t in tensors]
            self._on_wait(time.perf_counter() - t0)
        return self._tensors

    def done(self) -> bool:
        return self._future.done()


@runtime_checkable
class Transport(Protocol):
    """One endpoint (rank) of a message-passing group; see the module docstring for the contract."""

    rank: int
    world_size: int
    device: torch.device
    header_bytes_per_message: int

    def send(self, dst: int, kind: str, tensors: Sequence[torch.Tensor]) -> Handle: ...
    def irecv(self, src: int, kind: str) -> RecvHandle: ...
    def recv(self, src: int, kind: str, timeout_s: float | None = None) -> list[torch.Tensor]: ...
    @property
    def stats(self) -> TransportStats: ...
    def reset_stats(self) -> None: ...
    def close(self, timeout_s: float | None = None) -> None: ...


class _EndpointBase:
    """Validation, kind registry and stats shared by both implementations."""

    header_bytes_per_message = 0

    def __init__(self, rank: int, world_size: int, device: torch.device, timeout_s: float | None):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.timeout_s = timeout_s  # default for recv(); None waits forever
        self._recorder = _StatsRecorder()
        self._kinds: dict[int, str] = {}
        self._kinds_lock = threading.Lock()

    @property
    def stats(self) -> TransportStats:
        return self._recorder.snapshot()

    def reset_stats(self) -> None:
        self._recorder.reset()

    def _check_peer(self, peer: int, role: str) -> None:
        if not 0 <= peer < self.world_size or peer == self.rank:
            raise ValueError(
                f"{role} rank {peer} is invalid for rank {self.rank}: "
                f"valid peers are 0..{self.world_size - 1} except {self.rank}"
            )

    def _register_kind(self, kind: str) -> int:
        kid = kind_id(kind)
        with self._kinds_lock:
            known = self._kinds.setdefault(kid, kind)
        if known != kind:
            raise ValueError(f"message kinds {known!r} and {kind!r} share id {kid}; rename one")
        return kid

    def recv(self, src: int, kind: str, timeout_s: float | None = None) -> list[torch.Tensor]:
        """Blocks until the next `kind` message from `src` arrives (timeout_s None: the endpoint default)."""
        return self.irecv(src, kind).wait(self.timeout_s if timeout_s is None else timeout_s)

    def _recv_handle(self, future: Future, src: int, kind: str) -> RecvHandle:
        def on_wait(s: float) -> None:
            self._recorder.add(kind, recv_wait_s=s)

        return RecvHandle(future, self.device, on_wait, f"{kind!r} message from rank {src}")


# ---- in-process ----------------------------------------------------------------------------------


class _Mailbox:
    """FIFO of messages for one (src, dst, kind), matched in order with FIFO of waiting receives."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: deque[list[torch.Tensor]] = deque()
        self._waiters: deque[Future] = deque()

    def put(self, message: list[torch.Tensor]) -> None:
        with self._lock:
            waiter = self._waiters.popleft() if self._waiters else None
            if waiter is None:
                self._messages.append(message)
        if waiter is not None:
            waiter.set_result(message)

    def take(self) -> Future:
        future: Future = Future()
        with self._lock:
            message = self._messages.popleft() if self._messages else None
            if message is None:
                self._waiters.append(future)
        if message is not None:
            future.set_result(message)
        return future


class _Hub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._boxes: dict[tuple[int, int, str], _Mailbox] = {}

    def box(self, src: int, dst: int, kind: str) -> _Mailbox:
        with self._lock:
            return self._boxes.setdefault((src, dst, kind), _Mailbox())


class InProcessTransport(_EndpointBase):
    """Endpoint for threads of one process; make a connected set with `InProcessTransport.create(n)`.

    send() copies the tensors (so the caller may reuse them at once) and completes immediately;
    the receiver gets them moved to its own device.
    """

    header_bytes_per_message = 0

    def __init__(self, hub: _Hub, rank: int, world_size: int, device: torch.device, timeout_s: float | None):
        super().__init__(rank, world_size, device, timeout_s)
        self._hub = hub

    @classmethod
    def create(
        cls,
        world_size: int,
        devices: Sequence[torch.device | str] | None = None,
        timeout_s: float | None = 300.0,
    ) -> list[InProcessTransport]:
        """`world_size` connected endpoints, rank i on devices[i] (default CPU)."""
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        devices = ["cpu"] * world_size if devices is None else list(devices)
        if len(devices) != world_size:
            raise ValueError(f"got {len(devices)} devices for {world_size} endpoints")
        hub = _Hub()
        return [cls(hub, r, world_size, torch.device(devices[r]), timeout_s) for r in range(world_size)]

    def send(self, dst: int, kind: str, tensors: Sequence[torch.Tensor]) -> Handle:
        self._check_peer(dst, "destination")
        self._register_kind(kind)
        check_message(tensors)
        t0 = time.perf_counter()
        message = [t.detach().clone(memory_format=torch.contiguous_format) for t in tensors]
        self._hub.box(self.rank, dst, kind).put(message)
        self._recorder.add(
            kind, messages_sent=1, payload_bytes_sent=payload_bytes(message), send_s=time.perf_counter() - t0
        )
        return CompletedHandle()

    def irecv(self, src: int, kind: str) -> RecvHandle:
        self._check_peer(src, "source")
        self._register_kind(kind)
        future = self._hub.box(src, self.rank, kind).take()

        def count(done: Future) -> None:  # bytes are counted once, when the message is matched
            if done.exception() is None:
                self._recorder.add(
                    kind, messages_received=1, payload_bytes_received=payload_bytes(done.result())
                )

        future.add_done_callback(count)
        return self._recv_handle(future, src, kind)

    def close(self, timeout_s: float | None = None) -> None:
        return None


# ---- torch.distributed ---------------------------------------------------------------------------


class _SerialWorker:
    """One daemon thread running submitted calls in submission order (one per source rank)."""

    def __init__(self, name: str) -> None:
        self._queue: deque[tuple[Callable[[], object], Future] | None] = deque()
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], object]) -> Future:
        future: Future = Future()
        with self._ready:
            self._queue.append((fn, future))
            self._ready.notify()
        return future

    def stop(self, timeout_s: float = 1.0) -> None:
        """Ends the thread after the calls already submitted; waits up to timeout_s for it."""
        with self._ready:
            self._queue.append(None)
            self._ready.notify()
        self._thread.join(timeout_s)

    def _loop(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
                item = self._queue.popleft()
            if item is None:
                return
            fn, future = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:
                    future.set_exception(exc)


class _SourceStream:
    """Reads the ordered message stream from one source rank and demultiplexes it by kind.

    Only its worker thread touches it: messages of other kinds read on the way are stashed.
    A failure (peer gone, corrupt header) poisons the stream: later receives re-raise it.
    """

    def __init__(self, owner: TorchDistTransport, src: int) -> None:
        self._owner = owner
        self._src = src
        self._stash: dict[int, deque[list[torch.Tensor]]] = defaultdict(deque)
        self._next_seq = 0
        self._error: BaseException | None = None
        wire = owner._wire_device
        self._cuda_stream = torch.cuda.Stream(wire) if wire.type == "cuda" else None
        self.worker = _SerialWorker(f"transport-recv-from-{src}")

    def take(self, kind: str, kid: int) -> list[torch.Tensor]:
        """The oldest `kind` message from the source (counted in stats when handed over)."""
        if self._error is not None:
            raise RuntimeError(f"message stream from rank {self._src} failed earlier") from self._error
        try:
            while not self._stash[kid]:
                got_kid, tensors = self._read_message()
                self._stash[got_kid].append(tensors)
        except BaseException as exc:
            self._error = exc
            raise
        tensors = self._stash[kid].popleft()
        self._owner._recorder.add(
            kind,
            messages_received=1,
            payload_bytes_received=payload_bytes(tensors),
            header_bytes_received=HEADER_BYTES,
        )
        return tensors

    def _read_message(self) -> tuple[int, list[torch.Tensor]]:
        owner = self._owner
        header = torch.empty(HEADER_LEN, dtype=torch.int64)
        dist.irecv(header, self._src, group=owner._header_group, tag=_TAG).wait()
        parsed = decode_header(header.tolist())
        if parsed.seq != self._next_seq:
            raise RuntimeError(
                f"message {parsed.seq} from rank {self._src} arrived, expected {self._next_seq}"
            )
        self._next_seq += 1
        if self._cuda_stream is None:
            return parsed.kind_id, self._read_payload(parsed)
        # CUDA: receive on this thread's own stream and wait for it only (not for the compute stream);
        # RecvHandle.wait records the consumer's stream on the tensors for the caching allocator.
        with torch.cuda.stream(self._cuda_stream):
            tensors = self._read_payload(parsed)
        self._cuda_stream.synchronize()
        return parsed.kind_id, tensors

    def _read_payload(self, parsed: MessageHeader) -> list[torch.Tensor]:
        """The message's tensors, received as one packed byte buffer (see pack_payload) and split."""
        owner = self._owner
        sizes = [math.prod(s.shape) * _ELEMENT_SIZES[s.dtype] for s in parsed.specs]
        buffer = torch.empty(packed_bytes(sizes), dtype=torch.uint8, device=owner._wire_device)
        if buffer.numel():
            dist.irecv(buffer, self._src, group=owner._payload_group(self._src, owner.rank), tag=_TAG).wait()
        return unpack_payload(buffer, parsed.specs, sizes)


class TorchDistTransport(_EndpointBase):
    """Endpoint over the default torch.distributed group (ranks are its ranks).

    Wire format: each message is one int64 header tensor of HEADER_LEN = 60 values (HEADER_BYTES =
    480 bytes: magic, per-pair sequence number, kind id, tensor count, then for each of MAX_TENSORS = 8
    slots a dtype code, ndim and MAX_NDIM = 5 dims), followed by the payload tensors packed into one
    byte buffer (pack_payload; nothing when the payload is empty), both with isend/irecv. Each tensor
    starts 8-byte aligned in that buffer: up to 7 padding bytes per tensor travel on top of the counted
    payload and header (none for q/k/v/output messages whose sizes are multiples of 8 bytes). Headers always travel over a gloo group (CPU; reading one never synchronizes
    the GPU). Payloads travel over the backend of the default group: gloo (CPU tensors) or NCCL
    (CUDA tensors), with one NCCL group per direction (lower -> higher rank and back) so that a send
    waiting for its matching receive (NCCL may block a send until then) never sits in front of a
    receive in the opposite direction on the same stream.

    Receives run on one background thread per source rank that reads that source's messages in
    order and hands each to the oldest pending receive of its kind.

    The constructor is collective: every rank of the default group must construct its transport, in
    the same order relative to other group creations.
    """

    header_bytes_per_message = HEADER_BYTES

    def __init__(self, device: torch.device | str | None = None, timeout_s: float | None = 300.0):
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialized; call init_process_group first")
        backend = str(dist.get_backend())  # "gloo", "nccl" or a mix like "cpu:gloo,cuda:nccl"
        if "nccl" in backend:
            wire = torch.device("cuda", torch.cuda.current_device())
        elif "gloo" in backend:
            wire = torch.device("cpu")
        else:
            raise ValueError(f"backend {backend!r} is not supported; valid: gloo, nccl")
        super().__init__(dist.get_rank(), dist.get_world_size(), torch.device(device or wire), timeout_s)
        self._wire_device = wire
        # Collective group creation: the same calls in the same order on every rank.
        self._header_group = dist.new_group(backend="gloo")
        if wire.type == "cuda":
            self._up_group, self._down_group = dist.new_group(backend="nccl"), dist.new_group(backend="nccl")
        else:
            self._up_group = self._down_group = self._header_group
        self._send_locks = {r: threading.Lock() for r in range(self.world_size)}
        self._send_seq = [0] * self.world_size
        self._pending: list[_WorkHandle] = []
        self._pending_lock = threading.Lock()
        self._streams: dict[int, _SourceStream] = {}
        self._streams_lock = threading.Lock()

    def _payload_group(self, src: int, dst: int):
        return self._up_group if src < dst else self._down_group

    def send(self, dst: int, kind: str, tensors: Sequence[torch.Tensor]) -> Handle:
        self._check_peer(dst, "destination")
        self._register_kind(kind)
        check_message(tensors)
        t0 = time.perf_counter()
        wire = [t.detach().to(self._wire_device).contiguous() for t in tensors]
        group = self._payload_group(self.rank, dst)
        packed = pack_payload(wire)
        with self._send_locks[dst]:  # header and payload of one message stay adjacent on the pair
            header = torch.tensor(encode_header(self._send_seq[dst], kind, wire), dtype=torch.int64)
            self._send_seq[dst] += 1
            works = [dist.isend(header, dst, group=self._header_group, tag=_TAG)]
            if packed.numel():
                works.append(dist.isend(packed, dst, group=group, tag=_TAG))

        def on_wait(s: float) -> None:
            self._recorder.add(kind, send_s=s)

        handle = _WorkHandle(works, [header, packed], on_wait)
        with self._pending_lock:  # close() waits for these
            self._pending = [h for h in self._pending if not h.done()] + [handle]
        self._recorder.add(
            kind,
            messages_sent=1,
            payload_bytes_sent=payload_bytes(wire),
            header_bytes_sent=HEADER_BYTES,
            send_s=time.perf_counter() - t0,
        )
        return handle

    def irecv(self, src: int, kind: str) -> RecvHandle:
        self._check_peer(src, "source")
        kid = self._register_kind(kind)
        with self._streams_lock:
            stream = self._streams.get(src)
            if stream is None:
                stream = self._streams[src] = _SourceStream(self, src)
        future = stream.worker.submit(lambda: stream.take(kind, kid))
        return self._recv_handle(future, src, kind)

    def close(self, timeout_s: float | None = None) -> None:
        """Waits for every send to complete and stops idle receive threads (a receive still waiting for
        a message that never comes is abandoned; its thread is a daemon). With timeout_s, a send that
        does not complete in time (e.g. to a dead peer) raises RuntimeError after the others are done."""
        with self._pending_lock:
            pending, self._pending = self._pending, []
        failures = []
        for handle in pending:
            try:
                handle.wait(timeout_s)
            except RuntimeError as exc:
                failures.append(exc)
        with self._streams_lock:
            for stream in self._streams.values():
                stream.worker.stop()
            self._streams.clear()
        if failures:
            raise RuntimeError(f"{len(failures)} send(s) did not complete: {failures[0]}")


# ---- link measurement ----------------------------------------------------------------------------

# Decimal SI sizes: 1 KB .. 64 MB in steps of 4x.
DEFAULT_LINK_SIZES_BYTES = (
    1_000,
    4_000,
    16_000,
    64_000,
    256_000,
    1_000_000,
    4_000_000,
    16_000_000,
    64_000_000,
)


@dataclass(frozen=True)
class LinkPoint:
    size_bytes: int  # payload of one message (the header comes on top)
    one_way_s: float  # median over repeats of round-trip time / 2
    bytes_per_s: float  # size_bytes / one_way_s

    def __post_init__(self) -> None:
        if self.size_bytes <= 0 or not self.one_way_s > 0:
            raise ValueError(f"LinkPoint needs size_bytes > 0 and one_way_s > 0, got {self}")


@dataclass(frozen=True)
class LinkProfile:
    """One-way message time between two endpoints, measured (source: measured).

    Model t(S) = latency_s + S / bytes_per_s, the line through the smallest and the largest size's
    point: bytes_per_s is the incremental bandwidth between them and latency_s the line's zero-byte
    intercept (clamped at 0). With one size, or times that did not grow, bytes_per_s is NaN and
    latency_s the smallest message's time.
    """

    latency_s: float
    bytes_per_s: float
    points: tuple[LinkPoint, ...]
    header_bytes_per_message: int

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("LinkProfile needs at least one point")
        if not self.latency_s >= 0:
            raise ValueError(f"latency_s must be >= 0, got {self.latency_s}")

    def one_way_s(self, size_bytes: int) -> float:
        """Modeled one-way time of a message with `size_bytes` of payload."""
        return self.latency_s + size_bytes / self.bytes_per_s


def _ping_pong_times(transport: Transport, peer: int, size: int, repeats: int, warmup: int) -> list[float]:
    buf = torch.zeros(size, dtype=torch.uint8, device=transport.device)
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        transport.send(peer, "link_ping", [buf]).wait()
        transport.recv(peer, "link_pong")
        if i >= warmup:
            times.append((time.perf_counter() - t0) / 2)
    return times


def _echo(transport: Transport, peer: int, count: int) -> None:
    for _ in range(count):
        (buf,) = transport.recv(peer, "link_ping")
        transport.send(peer, "link_pong", [buf]).wait()


def measure_link(
    transport: Transport,
    peer: int,
    sizes_bytes: Sequence[int] = DEFAULT_LINK_SIZES_BYTES,
    repeats: int = 10,
    warmup: int = 2,
) -> LinkProfile:
    """Measures one-way latency and bandwidth between this endpoint and `peer`; both call it.

    The lower rank times ping-pongs (round trip / 2, median of `repeats` after `warmup`) per size, the
    higher rank echoes; the timings are then sent to the higher rank so both return the same
    profile. Messages use kinds "link_ping", "link_pong", "link_result" (visible in stats).
    """
    sizes = [int(s) for s in sizes_bytes]
    if not sizes or sizes != sorted(set(sizes)) or sizes[0] <= 0:
        raise ValueError(f"sizes_bytes must be positive, strictly increasing and non-empty, got {sizes}")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    if transport.rank < peer:
        medians = [statistics.median(_ping_pong_times(transport, peer, s, repeats, warmup)) for s in sizes]
        transport.send(peer, "link_result", [torch.tensor(medians, dtype=torch.float64)]).wait()
    else:
        for _ in sizes:
            _echo(transport, peer, warmup + repeats)
        medians = transport.recv(peer, "link_result")[0].tolist()
    points = tuple(LinkPoint(s, t, s / t) for s, t in zip(sizes, medians, strict=True))
    return _fit_link(points, transport.header_bytes_per_message)


def _fit_link(points: tuple[LinkPoint, ...], header_bytes_per_message: int) -> LinkProfile:
    """Line t(S) = latency_s + S / bytes_per_s through the smallest and the largest size."""
    first, last = points[0], points[-1]
    if last.one_way_s <= first.one_way_s:  # one size, or no growth: no bandwidth to read off
        return LinkProfile(first.one_way_s, float("nan"), points, header_bytes_per_message)
    bytes_per_s = (last.size_bytes - first.size_bytes) / (last.one_way_s - first.one_way_s)
    latency_s = max(first.one_way_s - first.size_bytes / bytes_per_s, 0.0)
    return LinkProfile(latency_s, bytes_per_s, points, header_bytes_per_message)
