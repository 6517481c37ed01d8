"""One worker's messages to the other ranks in one epoch: timed, with failure detection.

A transport call that raises (peer gone, timeout) marks the peer dead for the rest of the epoch; the
step then finishes in a degraded way so that no survivor blocks (see compute_worker.py and
attention_worker.py), and rank 0 learns of every failure from the compute workers' statuses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from reference_impl.lamina.clock import WorkerClock

# Message kinds (the transport accounts bytes per kind). The first four are the compute <-> attention
# link of decode that the paper's (2 + 2/G) e d per token per layer describes.
DECODE_LINK_KINDS = ("qkv", "q", "new_kv", "attn_out")
# "prompt_kv": a prompt's KV to the attention workers, layer by layer; "prefill_out": a prefill
# worker's logits of each prompt's last token, to rank 0.
KINDS = (*DECODE_LINK_KINDS, "prompt_kv", "live", "hidden", "ctrl", "status", "ack", "stats", "prefill_out")
# While a worker waits for a message with other work pending (recv_while), it looks at that work this often.
POLL_S = 0.001

_LINK_ERRORS = (RuntimeError, TimeoutError, ConnectionError)  # what gloo/NCCL and the transport raise


class _PendingRecv:
    def __init__(self, links: Links, src: int, handle) -> None:
        self._links, self._src, self._handle = links, src, handle

    def wait(self, timeout_s: float | None = None) -> list[torch.Tensor] | None:
        if self._handle is None:
            return None
        timeout_s = timeout_s or self._links.timeout_s
        return self._links._finish_recv(self._src, lambda: self._handle.wait(timeout_s))

    def done(self) -> bool:
        """True once wait() would return at once (the message is in, or the peer is known dead)."""
        return self._handle is None or self._src in self._links.dead or self._handle.done()


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

    def recv_while(
        self, src: int, kind: str, timeout_s: float, work: Callable[[], bool]
    ) -> list[torch.Tensor] | None:
        """Receives like recv, calling work() every POLL_S until the message is in; work returns False
        when it has nothing left, and the receive then simply waits."""
        pending = self.irecv(src, kind)
        with self.clock.section("idle"):
            while not pending.done() and work():
                time.sleep(POLL_S)
        return pending.wait(timeout_s)

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
