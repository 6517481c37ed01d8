"""Transport over torch.distributed: gloo on CPU, NCCL on CUDA (see `TorchDistTransport`)."""

from __future__ import annotations

import datetime
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import torch
import torch.distributed as dist

from reference_impl.transport.endpoint import EndpointBase, Handle, RecvHandle
from reference_impl.transport.wire import (
    HEADER_BYTES,
    HEADER_LEN,
    MessageHeader,
    check_message,
    decode_header,
    encode_header,
    pack_payload,
    packed_bytes,
    payload_bytes,
    unpack_payload,
)

_TAG = 0  # one tag for everything: per-pair FIFO order plus the kind id in the header demultiplex


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
        sizes = [s.nbytes for s in parsed.specs]
        buffer = torch.empty(packed_bytes(sizes), dtype=torch.uint8, device=owner._wire_device)
        if buffer.numel():
            dist.irecv(buffer, self._src, group=owner._payload_group(self._src, owner.rank), tag=_TAG).wait()
        return unpack_payload(buffer, parsed.specs, sizes)


class TorchDistTransport(EndpointBase):
    """Endpoint over the default torch.distributed group (ranks are its ranks).

    Wire format (wire.py): each message is one int64 header tensor (HEADER_BYTES = 480 bytes) followed
    by the payload tensors packed into one byte buffer (pack_payload; nothing when the payload is
    empty), both with isend/irecv. Each tensor starts 8-byte aligned in that buffer: up to 7 padding
    bytes per tensor travel on top of the counted payload and header (none for q/k/v/output messages
    whose sizes are multiples of 8 bytes). Headers always travel over a gloo group (CPU; reading one
    never synchronizes the GPU). Payloads travel over the backend of the default group: gloo (CPU
    tensors) or NCCL (CUDA tensors), with one NCCL group per direction (lower -> higher rank and back)
    so that a send waiting for its matching receive (NCCL may block a send until then) never sits in
    front of a receive in the opposite direction on the same stream.

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
