"""Bodies of the processes that test_supervisor.py starts: stdlib only, so a child starts in well under a
second (torch is imported by the one that computes with it)."""

from __future__ import annotations

import os
import signal
import time

from reference_impl import supervisor
from reference_impl.supervisor import Stage


def answer(x: int) -> int:
    return 2 * x


def signal_self(name: str) -> None:
    supervisor.report(Stage.DECODE, 4)
    os.kill(os.getpid(), getattr(signal, name))
    time.sleep(60)  # a stopped process never gets here; a killed one neither


def fail() -> None:
    raise ValueError("fails on purpose\nsecond line")


def sleep_forever() -> None:
    supervisor.report(Stage.SERVING)
    time.sleep(3600)


def exit_quietly() -> None:
    os._exit(3)  # no result, no error: an exit the supervisor did not expect


def busy(seconds: float) -> str:
    """A long step: Python bytecode and torch kernels back to back, nothing else, for `seconds`."""
    import torch

    deadline = time.monotonic() + seconds
    a = torch.randn(256, 256)
    n = 0
    while time.monotonic() < deadline:
        a = torch.tanh(a @ a)  # a torch kernel (releases the interpreter lock)
        n += sum(i * i for i in range(20_000))  # Python bytecode (holds it between switches)
    return "done"
