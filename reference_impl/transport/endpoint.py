"""The transport contract: the `Transport` protocol and its handles, and the endpoint base (peer checks,
kind registry, statistics) that both implementations share."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Protocol, runtime_checkable

import torch

from reference_impl.transport.stats import StatsRecorder, TransportStats
from reference_impl.transport.wire import kind_id


class Handle(Protocol):
    def wait(self) -> None: ...
    def done(self) -> bool: ...


class CompletedHandle:
    """Handle of a send that finished inside send()."""

    def wait(self) -> None:
        return None

    def done(self) -> bool:
        return True


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


class EndpointBase:
    """Validation, kind registry and stats shared by both implementations."""

    header_bytes_per_message = 0

    def __init__(self, rank: int, world_size: int, device: torch.device, timeout_s: float | None):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.timeout_s = timeout_s  # default for recv(); None waits forever
        self._recorder = StatsRecorder()
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
