"""Traffic statistics of one transport endpoint: messages, exact bytes and blocked time per message kind."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


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


class StatsRecorder:
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
