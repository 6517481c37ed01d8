"""Point rows as one flat table (pandas), for analysis and for the `points.parquet` export of a run.

Columns: the identity and configuration columns, every registered metric (missing values NaN), the CI
bounds `<metric>_ci_low/_ci_high` of metrics that have one, then the nested parts flattened with dotted
names (`settings.arrival`, `pools.compute.dense_ms`, `whole_trace.throughput_tok_per_s`) and the rest.
The table is a view: the store's JSON files are the rows; nothing reads the table back.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from lamina_bench.results.metrics import METRICS
from lamina_bench.results.row import CONFIG_FIELDS, PointRow

_HEAD = {
    "run_id": "string",
    "point_id": "string",
    **dict.fromkeys(CONFIG_FIELDS, "string"),
    "repeat": "Int64",
    "repeats": "Int64",
    "source": "string",
    "profile": "string",
    "status": "string",
    "error": "string",
}
_HEAD.update(batch_size="Int64", context_len="Int64", pipeline_batches="Int64", requests="Int64")
_TAIL = {
    "predicts": "string",
    "rejected_requests": "Int64",
    "throughput_basis": "string",
    "failed_repeats": "Int64",
    "repeat_error": "string",
    "telemetry_verdict": "string",
    "repro_command": "string",
    "wall_s": "float64",
    "timestamp": "string",
}


def columns() -> dict[str, str]:
    """The fixed columns and their pandas dtypes (flattened nested parts come after them)."""
    metric_cols = dict.fromkeys(METRICS, "float64")
    ci_cols = {
        f"{m.name}_ci_{side}": "float64" for m in METRICS.values() if m.has_ci for side in ("low", "high")
    }
    return {**_HEAD, **metric_cols, **ci_cols, **_TAIL}


def flat(row: PointRow) -> dict[str, Any]:
    """One row as flat columns (see the module doc)."""
    out: dict[str, Any] = {c: getattr(row, c) for c in _HEAD}
    out.update({name: row.metrics.get(name) for name in METRICS})
    for name, (low, high) in row.ci.items():
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = low, high
    out.update({c: getattr(row, c) for c in _TAIL})
    out.update({f"settings.{k}": v for k, v in sorted(row.settings.items())})
    out.update(
        {f"pools.{p}.{k}": v for p, parts in sorted(row.pools.items()) for k, v in sorted(parts.items())}
    )
    out.update({f"whole_trace.{k}": v for k, v in sorted(row.whole_trace.items())})
    return out


def points_frame(rows: Iterable[PointRow]) -> pd.DataFrame:
    """The rows as a DataFrame with the fixed columns first (their dtypes), flattened parts after."""
    fixed = columns()
    records = [flat(r) for r in rows]
    extra = sorted({k for rec in records for k in rec} - set(fixed))
    frame = pd.DataFrame(records, columns=[*fixed, *extra])
    kinds = {c: _dtype(frame[c]) for c in extra}
    return frame.astype({**fixed, **kinds})


def _dtype(column: pd.Series) -> str:
    """float64 for a column of numbers, else string (so Parquet never sees mixed types)."""
    values = column.dropna()
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    return "float64" if numeric else "string"
