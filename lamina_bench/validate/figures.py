"""Error figures of the judged rows, the committed figures (results/validation/errors.json) and the gate.

A figure is one group of judged rows: n, median |error|, p90 |error| and the worst row with its
conditions. Groups: per set (calibration / validation), per kind, per kind and GPU, plus "operator"
(every operator-level kind pooled: dense layers, GEMM, decode attention, all-reduce, p2p). Error is
predicted / measured - 1.

The gate: every validation figure of the committed file must not get worse (median or p90 higher
by more than TOLERANCE, or a figure gone). `validate --update-figures` rewrites the file.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lamina_bench.errors import UserInputError
from lamina_bench.results.files import atomic_write_json
from lamina_bench.validate.files import DEFAULT_DIR
from lamina_bench.validate.predict import OPERATOR_KINDS, Judged

FIGURES_FORMAT = "lamina-bench-validation-errors/1"
DEFAULT_FIGURES = DEFAULT_DIR / "errors.json"
TOLERANCE = 1e-6  # the model is deterministic: anything beyond float noise is a change
OPERATOR = "operator"


@dataclass(frozen=True)
class Figure:
    n: int
    median: float
    p90: float
    worst: Judged

    def to_dict(self) -> dict:
        return {"n": self.n, "median_abs_err": round(self.median, 6), "p90_abs_err": round(self.p90, 6)}


def figure(judged: list[Judged]) -> Figure:
    err = np.abs([j.error for j in judged])
    return Figure(
        len(judged), float(np.median(err)), float(np.quantile(err, 0.9)), judged[int(np.argmax(err))]
    )


def group_key(split: str, kind: str, gpu: str | None = None) -> str:
    return f"{split}/{kind}" + (f"/{gpu}" if gpu else "")


def figures(judged: Iterable[Judged]) -> dict[str, Figure]:
    """Every figure by key `split/kind[/gpu]` (module doc)."""
    groups: dict[str, list[Judged]] = defaultdict(list)
    for j in judged:
        groups[group_key(j.split, j.kind)].append(j)
        groups[group_key(j.split, j.kind, j.gpu)].append(j)
        if j.kind in OPERATOR_KINDS:
            groups[group_key(j.split, OPERATOR)].append(j)
            groups[group_key(j.split, OPERATOR, j.gpu)].append(j)
    return {key: figure(rows) for key, rows in sorted(groups.items())}


def figures_to_dict(figs: Mapping[str, Figure], sources: Mapping[str, object]) -> dict:
    return {
        "format": FIGURES_FORMAT,
        "date": dt.date.today().isoformat(),
        "command": "lamina-bench validate --update-figures",
        "sources": sources,
        "figures": {k: f.to_dict() for k, f in figs.items()},
    }


def write_figures(figs: Mapping[str, Figure], sources: Mapping[str, object], path=DEFAULT_FIGURES) -> Path:
    path = Path(path)
    atomic_write_json(path, figures_to_dict(figs, sources))
    return path


def load_figures(path=DEFAULT_FIGURES) -> dict[str, dict] | None:
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{path} is not valid JSON: {exc}") from None
    if data.get("format") != FIGURES_FORMAT:
        raise UserInputError(f"{path}: format is {data.get('format')!r}, expected {FIGURES_FORMAT!r}")
    return data["figures"]


def regressions(current: Mapping[str, Figure], committed: Mapping[str, dict]) -> list[str]:
    """One line per committed validation figure that got worse (or is gone)."""
    out = []
    for key, old in sorted(committed.items()):
        if not key.startswith("validation/"):
            continue
        new = current.get(key)
        if new is None:
            out.append(f"{key}: no longer measured (committed n={old['n']})")
            continue
        for name, value in (("median_abs_err", new.median), ("p90_abs_err", new.p90)):
            if value > old[name] + TOLERANCE:
                out.append(f"{key}: {name} {value:.4f} > committed {old[name]:.4f}")
    return out
