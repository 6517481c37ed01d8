"""Link measurement: one-way latency and bandwidth between two endpoints, by ping-pong (measured)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from reference_impl.transport.endpoint import Transport

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
