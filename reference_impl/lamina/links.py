"""One worker's messages to the other ranks in one epoch: timed, with failure detection.

A transport call that raises (peer gone, timeout) marks the peer dead for the rest of the epoch; the
step then finishes in a degraded way so that no survivor blocks (see compute_worker.py and
attention_worker.py), and rank 0 learns of every failure from the compute workers' statuses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from reference_impl.lamina.clock import WorkerClock

# Message kinds (the transport accounts bytes per kind). The first four are the compute <-> attention
# link of decode that the paper's (2 + 2/G) e d per token per layer describes.
DECODE_LINK_KINDS = ("qkv", "q", "new_kv", "attn_out")
KINDS = (*DECODE_LINK_KINDS, "prompt_kv", "live", "hidden", "ctrl", "status", "ack", "stats")

_LINK_ERRORS = (RuntimeError, TimeoutError, ConnectionError)  # what gloo/NCCL and the transport raise


class _PendingRecv:
    def __init__(self, links: Links, src: int, handle) -> None:
        self._links, self._src, self._handle = links, src, handle

    def wait(self) -> list[torch.Tensor] | None:
        if self._handle is None:
            return None
        return self._links._finish_recv(self._src, lambda: self._handle.wait(self._links.timeout_s))


class Links:
    """One worker's transport calls in one epoch, timed, with failure detection.

    A send or receive that raises marks the peer dead: later calls to it do nothing (send) or return
    None (receive), so a step always runs to its end. An empty message (no tensors) is the poison a
    worker sends in place of an output it could not compute; receiving one also returns None.
    """

    def __init__(self, transport, clock: WorkerClock, timeout_s: float | None = None) -> None:
        self.transport = transport
        self.clock = clock
        self.timeout_s = timeout_s  # None: the transport's default
        self.dead: set[int] = set()
        self._pending: list[tuple[int, object]] = []

    def send(self, dst: int, kind: str, tensors: Sequence[torch.Tensor]) -> None:
        if dst in self.dead:
            return
        with self.clock.section("network"):
            try:
                self._pending.append((dst, self.transport.send(dst, kind, list(tensors))))
            except _LINK_ERRORS:
                self.dead.add(dst)

    def irecv(self, src: int, kind: str) -> _PendingRecv:
        if src in self.dead:
            return _PendingRecv(self, src, None)
        try:
            return _PendingRecv(self, src, self.transport.irecv(src, kind))
        except _LINK_ERRORS:
            self.dead.add(src)
            return _PendingRecv(self, src, None)

    def recv(self, src: int, kind: str, timeout_s: float | None = None) -> list[torch.Tensor] | None:
        if src in self.dead:
            return None
        return self._finish_recv(src, lambda: self.transport.recv(src, kind, timeout_s or self.timeout_s))

    def _finish_recv(self, src: int, wait) -> list[torch.Tensor] | None:
        if src in self.dead:
            return None
        with self.clock.section("idle"):
            try:
                tensors = wait()
            except _LINK_ERRORS:
                self.dead.add(src)
                return None
        return tensors or None

    def flush(self) -> None:
        """Waits until every send has completed (a failed one marks its peer dead)."""
        with self.clock.section("network"):
            for dst, handle in self._pending:
                try:
                    handle.wait()
                except _LINK_ERRORS:
                    self.dead.add(dst)
            self._pending = []


def status_tensor(poisoned: bool, dead: set[int]) -> torch.Tensor:
    """A compute worker's end-of-step report to rank 0: [poisoned, dead ranks...]."""
    return torch.tensor([int(poisoned), *sorted(dead)], dtype=torch.int64)
