"""What `lamina-bench validate` does, as functions: calibrate, predict every row, figures, gate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lamina_bench.errors import UserInputError
from lamina_bench.model.ops.calibration import (
    DEFAULT_CALIBRATION,
    Calibration,
    load_calibration,
    write_calibration,
)
from lamina_bench.validate.e2e import predict_e2e
from lamina_bench.validate.figures import Figure, figures
from lamina_bench.validate.files import SPLITS, ValidationFile, load_files
from lamina_bench.validate.fit import calibrate
from lamina_bench.validate.predict import Judged, predict_operators

SETS = ("validation", "calibration", "all")
# Where `lamina-bench validate` stores its run by default, relative to the working directory: under
# results/ like a sweep's runs, in a folder of its own so that "the newest run" of results/ stays a
# sweep's; not committed (.gitignore keeps only results/baselines, profiles, reference and validation).
DEFAULT_RUNS = "results/validation-runs"


def run_calibration(
    folder: str | Path | None = None, out: str | Path = DEFAULT_CALIBRATION
) -> tuple[Calibration, Path]:
    """Fit on the calibration files of `folder` (validation files are dropped unread) and write the file."""
    cal = calibrate(load_files(folder, split="calibration"))
    return cal, write_calibration(cal, out)


@dataclass(frozen=True)
class Validation:
    calibration: Calibration
    splits: tuple[str, ...]
    files: tuple[ValidationFile, ...]
    judged: tuple[Judged, ...]
    left_out: tuple[tuple[str, int, str], ...]
    figures: dict[str, Figure]

    def sources(self) -> dict[str, object]:
        return {split: sorted({f.id for f in self.files if f.split == split}) for split in self.splits} | {
            "calibration_date": self.calibration.date
        }

    def run_spec(self) -> dict[str, object]:
        """What a stored validate run holds (its manifest spec): sets, files with their sources, calibration."""
        return {
            "sets": list(self.splits),
            "calibration_date": self.calibration.date,
            "calibration_files": sorted(
                {f for g in self.calibration.fit.values() for fam in g.values() for f in fam["files"]}
            ),
            "files": {
                f.id: {"kind": f.kind, "split": f.split, "gpu": f.gpu, "source": f.source} for f in self.files
            },
            "left_out": [{"file": f, "row": i, "reason": r} for f, i, r in self.left_out],
        }


def splits_of(which: str) -> tuple[str, ...]:
    if which not in SETS:
        raise UserInputError(f"unknown set {which!r}; valid: {', '.join(SETS)}")
    return SPLITS if which == "all" else (which,)


def run_validation(
    which: str = "validation", folder: str | Path | None = None, calibration: str | Path | None = None
) -> Validation:
    splits = splits_of(which)
    cal = load_calibration(calibration)
    if cal is None:
        raise UserInputError(
            f"no calibration file at {calibration or DEFAULT_CALIBRATION}; run `lamina-bench validate --calibrate`"
        )
    files = tuple(f for f in load_files(folder) if f.split in splits)
    judged = predict_operators(files, cal)
    e2e, left_out = predict_e2e(files, cal)
    judged = tuple(judged + e2e)
    return Validation(cal, splits, files, judged, tuple(left_out), figures(judged))


def set_ids(files: Sequence[ValidationFile]) -> list[str]:
    return sorted(f.id for f in files)
