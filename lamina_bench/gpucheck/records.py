"""What a GPU check step works with: its context in, its outcome out, its result in the summary.

Every number a step reports is a `Quantity`: value, unit and source. Sources are the registry's
(`lamina_bench.results.metrics.SOURCES`) less `modeled`: a check reports what it measured and what
follows from measurements (ratios, byte counts over measured times), never a model's prediction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamina_bench.gpucheck.sizes import CheckSizes
from lamina_bench.results.metrics import SOURCES

CHECK_SOURCES = tuple(s for s in SOURCES if s != "modeled")  # measured | derived
STATUSES = ("ok", "failed", "skipped")


@dataclass(frozen=True)
class Quantity:
    """One reported number: value, unit (decimal SI; "1" for a ratio) and where it comes from."""

    value: float
    unit: str
    source: str

    def __post_init__(self) -> None:
        if self.source not in CHECK_SOURCES:
            raise ValueError(f"source must be one of {', '.join(CHECK_SOURCES)}, got {self.source!r}")
        if not (isinstance(self.value, int | float) and math.isfinite(self.value)):
            raise ValueError(f"value must be a finite number, got {self.value!r}")
        if not self.unit:
            raise ValueError("unit must be given (use '1' for a ratio)")


@dataclass(frozen=True)
class StepOutcome:
    """What a step returns. failure: the step ran but its check failed (its numbers are kept)."""

    numbers: Mapping[str, Quantity] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    failure: str | None = None


class StepSkipped(Exception):
    """Raised by a step that cannot run here (the message is the reason)."""


class StepTimeout(BaseException):
    """Raised by the alarm when a step outlives its box; a BaseException so no `except Exception` eats it."""


@dataclass(frozen=True)
class StepResult:
    """One step's entry in the summary (written as JSON by `results.manifest`'s plain-value conversion)."""

    name: str
    status: str  # ok | failed | skipped
    wall_s: float
    time_box_s: float
    numbers: Mapping[str, Quantity] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    error: str | None = None  # one line, set exactly when status == failed
    reason: str | None = None  # why a step was skipped

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {self.status!r}")
        if (self.status == "failed") != (self.error is not None):
            raise ValueError("error must be set exactly when status is 'failed'")


@dataclass
class CheckContext:
    """State of one check run, shared by its steps."""

    out_dir: Path
    work_dir: Path  # scratch (run store, bench models), removed at the end
    sizes: CheckSizes
    log: Callable[[str], None]
    results: list[StepResult] = field(default_factory=list)
    deadline_s: float = math.inf  # time.monotonic() when the current step's box ends

    def result(self, name: str) -> StepResult | None:
        return next((r for r in self.results if r.name == name), None)


def one_line(exc: BaseException) -> str:
    """`Type: message` of an exception on one line."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())
