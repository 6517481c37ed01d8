"""What the caller of the GPU check chooses, checked before anything runs (no torch needed).

By default there is no overall budget: every step runs inside its own time box of `step_timeout_s`, so a
hung step cannot hang the run forever. With a budget, each step's box is also capped by its share of the
budget left, and the process is stopped at the latest `grace_s` after the budget ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamina_bench.errors import UserInputError
from lamina_bench.gpucheck.sizes import DEVICES, STEP_NAMES, parse_steps
from lamina_bench.results.paths import check_output_folder

DEFAULT_STEP_TIMEOUT_S = 1800.0  # no step of the full sizes needs a tenth of this on an H100
HARD_STOP_GRACE_S = 50.0  # the watchdog stops the process this long after a box ends
MAX_SECONDS = 30 * 24 * 3600.0  # the step alarm (setitimer) and the watchdog timer overflow far above
FAIL_ENV = "LAMINA_GPUCHECK_FAIL"  # comma-separated step names made to raise at once (failure isolation)


@dataclass(frozen=True)
class CheckSettings:
    """The options of one run; every value is checked here (UserInputError names the option)."""

    out_dir: Path
    quick: bool = False
    budget_s: float | None = None  # None: no overall budget, each step boxed by step_timeout_s alone
    step_timeout_s: float = DEFAULT_STEP_TIMEOUT_S
    device: str | None = None  # None: cuda when torch sees one, else cpu
    steps: tuple[str, ...] = STEP_NAMES  # which steps run; always in STEP_NAMES order
    fail_steps: tuple[str, ...] = ()  # steps that raise at once (failure isolation tests)
    grace_s: float = HARD_STOP_GRACE_S

    def __post_init__(self) -> None:
        if self.budget_s is not None:
            check_seconds("--budget-s", self.budget_s)
        check_seconds("--step-timeout-s", self.step_timeout_s)
        if not (_is_number(self.grace_s) and self.grace_s >= 0):
            raise UserInputError(f"the hard-stop grace must be >= 0 seconds, got {self.grace_s!r}")
        if self.device not in (None, *DEVICES):
            raise UserInputError(f"unknown --device {self.device!r}; valid: {', '.join(DEVICES)}")
        object.__setattr__(self, "out_dir", check_output_folder(self.out_dir, "OUT_DIR"))
        object.__setattr__(self, "steps", parse_steps(self.steps))
        for name in self.fail_steps:
            if name not in STEP_NAMES:
                raise UserInputError(f"unknown step {name!r} in {FAIL_ENV}; valid: {', '.join(STEP_NAMES)}")

    def as_record(self) -> dict[str, Any]:
        """The settings as the summary records them."""
        return {
            "quick": self.quick,
            "budget_s": self.budget_s,
            "step_timeout_s": self.step_timeout_s,
            "hard_stop_grace_s": self.grace_s,
            "device_requested": self.device,
            "steps": list(self.steps),
            "fail_steps": list(self.fail_steps),
        }


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_seconds(option: str, value: object) -> None:
    """UserInputError unless value is a positive number of seconds up to MAX_SECONDS (timers take no more)."""
    if not (_is_number(value) and 0 < value <= MAX_SECONDS):
        raise UserInputError(
            f"{option} must be a positive number of seconds, got {value!r} (at most {MAX_SECONDS:.0f}: 30 days)"
        )
