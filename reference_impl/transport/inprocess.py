"""In-process transport: endpoints for threads of one process (tests, the threads launcher).

No header crosses a wire, so `header_bytes_per_message` is 0; tensors are copied on send.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future

import torch

from reference_impl.transport.endpoint import CompletedHandle, EndpointBase, Handle, RecvHandle
from reference_impl.transport.wire import check_message, payload_bytes


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


class InProcessTransport(EndpointBase):
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
