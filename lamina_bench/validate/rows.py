"""Judged rows as a results run: each public measurement a `measured` PointRow, the model's prediction a
`modeled` (or `derived`) PointRow with `predicts` = that row's point id, so `lamina-bench compare` and the
report's measured-vs-modeled section read a validation run like any other.

The measured row's settings name its source file, the source (repository + path + commit) and what
it measures; its metric is `op_time_us` (operators) or `tbt_mean_ms` (e2e TPOT).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from lamina_bench.results.row import CONFIG_FIELDS, PointRow, point_id
from lamina_bench.results.store import RunStore
from lamina_bench.validate.predict import Judged

_SCALARS = (str, int, float, bool)


def _settings(j: Judged) -> dict:
    out = {"validation_file": j.file, "validation_kind": j.kind, "split": j.split, "gpu": j.gpu}
    out |= {k: v for k, v in j.conditions.items() if isinstance(v, _SCALARS)}
    out |= {k: v for k, v in j.settings.items() if isinstance(v, _SCALARS)}
    return {k: v for k, v in out.items() if k not in CONFIG_FIELDS}


def _compute(j: Judged) -> str:
    world = j.conditions.get("world_size") or j.conditions.get("tp") or 1
    return f"{int(world)}x{j.gpu}"


def point_rows(j: Judged) -> tuple[PointRow, PointRow]:
    """(measured, modeled) rows of one judgement."""
    settings = _settings(j)
    measured_id = point_id({**settings, "mode": "measured"})
    cond = j.conditions
    common = dict(
        model=str(cond["model"]) if "model" in cond else None,
        compute=_compute(j),
        batch_size=int(cond["batch"])
        if "batch" in cond
        else (int(cond["concurrency"]) if "concurrency" in cond else None),
        context_len=int(cond["context"]) if "context" in cond else None,
    )
    measured = PointRow(
        point_id=measured_id, source="measured", settings={**settings, "source": j.source[:300]},
        metrics={j.metric: j.measured}, **common,
    )  # fmt: skip
    modeled = PointRow(
        point_id=point_id({**settings, "mode": "modeled"}), source=j.model_source, settings=settings,
        metrics={j.metric: j.predicted}, profile=j.model_name, predicts=measured_id, **common,
    )  # fmt: skip
    return measured, modeled


def run_rows(judged: Iterable[Judged]) -> list[PointRow]:
    """Every judgement's (measured, modeled) rows; the same conditions twice in one file are numbered."""
    rows, seen = [], {}
    for j in judged:
        measured, modeled = point_rows(j)
        if measured.point_id in seen:  # the same conditions twice in one file: number the repeat
            seen[measured.point_id] += 1
            j = Judged(**{**j.__dict__, "settings": {**j.settings, "duplicate": seen[measured.point_id]}})
            measured, modeled = point_rows(j)
        seen.setdefault(measured.point_id, 0)
        rows += [measured, modeled]
    return rows


def write_run(
    judged: Iterable[Judged], root: str | Path, run_id: str, argv: list[str], spec: dict | None = None
) -> Path:
    """A results run folder with every judgement's two rows, written as one batch; returns its path.
    `spec` (the run's manifest spec) says what was validated against what."""
    store = RunStore.create(root, run_id, spec={"name": "validate", **(spec or {})}, argv=argv, devices=[])
    store.add_points(run_rows(judged))
    store.finalize()
    return store.path
