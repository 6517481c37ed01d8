"""Test-only fault injection: one spawned rank kills or stops itself at a named point of the run.

Off unless the environment of the spawning launcher (generate_lamina's processes launcher, or the
homogeneous engine with --tp > 1) sets

    REFERENCE_IMPL_FAULT=RANK:POINT[:SIGNAL]      e.g.  2:decode=3:STOP   0:startup   1:shutdown:KILL

POINT is where the rank's first process (never a replacement) signals itself:
    startup     the process has started (heartbeat running), before it joins the process group
    load        the group has formed, before the model is loaded (compute) or the cache allocated
    prefill=N   at its N-th prefill step (0-based; Lamina: compute ranks and rank 0 only see these)
    decode=N    at its N-th decode step (0-based, redone steps not counted), while the other ranks
                are in the same step
    shutdown    the run's steps are done: Lamina worker on STOP, rank 0 after the workers stopped;
                homogeneous rank after its engine finished, before handing over its result
SIGNAL is KILL (default: the process dies at once) or STOP (it freezes, every thread included, as a
hung process would; the supervisor finds it silent after the heartbeat timeout).

This module imports nothing heavy: the supervisor reads it in the spawned process before torch.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from reference_impl.errors import ConfigError

FAULT_ENV = "REFERENCE_IMPL_FAULT"
POINTS = ("startup", "load", "prefill", "decode", "shutdown")
INDEXED_POINTS = ("prefill", "decode")
SIGNALS = {"KILL": signal.SIGKILL, "STOP": signal.SIGSTOP}


@dataclass(frozen=True)
class Fault:
    rank: int
    point: str
    index: int | None = None  # prefill / decode: the step index
    signal: str = "KILL"

    def matches(self, point: str, index: int | None = None) -> bool:
        return point == self.point and (self.point not in INDEXED_POINTS or index == self.index)

    def fire(self) -> None:
        os.kill(os.getpid(), SIGNALS[self.signal])

    def __str__(self) -> str:
        point = self.point if self.index is None else f"{self.point}={self.index}"
        return f"{self.rank}:{point}:{self.signal}"


def parse_fault(text: str, world_size: int) -> Fault:
    """A Fault from RANK:POINT[:SIGNAL]; ConfigError naming the problem if it is malformed."""
    parts = text.strip().split(":")
    usage = f"{FAULT_ENV}={text!r}: expected RANK:POINT[:SIGNAL], e.g. 2:decode=3:STOP"
    if len(parts) not in (2, 3):
        raise ConfigError(usage)
    rank_text, point_text, signal_name = (*parts, "KILL") if len(parts) == 2 else parts
    point, _, index_text = point_text.partition("=")
    try:
        rank = int(rank_text)
        index = int(index_text) if index_text else None
    except ValueError:
        raise ConfigError(usage) from None
    if point not in POINTS:
        raise ConfigError(f"{usage}; POINT is one of {', '.join(POINTS)}")
    if (point in INDEXED_POINTS) != (index is not None) or (index is not None and index < 0):
        raise ConfigError(f"{usage}; prefill and decode take a step index >= 0 (decode=3), the others none")
    if signal_name not in SIGNALS:
        raise ConfigError(f"{usage}; SIGNAL is one of {', '.join(SIGNALS)}")
    if not 0 <= rank < world_size:
        raise ConfigError(f"{usage}; this run has ranks 0..{world_size - 1}")
    return Fault(rank, point, index, signal_name)


def fault_from_env(world_size: int) -> Fault | None:
    """The fault the environment asks for (None: the variable is unset or empty, the normal case)."""
    text = os.environ.get(FAULT_ENV, "").strip()
    return parse_fault(text, world_size) if text else None
