"""One point row: the configuration of a point, where its numbers come from, and the numbers.

Every producer (the sweep's measured, modeled and predicted points) builds a `PointRow`; the store
writes it as JSON (`to_record`), `compare` and the report read it back (`from_record`). Validation
happens on construction: a metric name outside the registry (results/metrics.py), a CI for a metric
without one, a failed row without its error, a bad point id or source all raise ValueError.

A stored record from before this schema (version 1: flat columns plus an `extra_json` string) is read
by `from_record` too, so older runs keep working.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lamina_bench.results.metrics import METRICS, POOL_PARTS, SOURCES, metric

SCHEMA_VERSION = 2
STATUSES = ("ok", "failed")
_POINT_ID_RE = re.compile(r"^[0-9a-f]{16}$")

# The configuration columns every row has (None where they do not apply), in table order.
CONFIG_FIELDS = (
    "model",
    "system",
    "compute",
    "attention",
    "trace",
    "batch_size",
    "context_len",
    "pipeline_batches",
    "dtype",
    "requests",
)
_INT_FIELDS = (
    "batch_size",
    "context_len",
    "pipeline_batches",
    "requests",
    "repeat",
    "repeats",
    "rejected_requests",
    "failed_repeats",
)
_STR_FIELDS = (
    "model",
    "system",
    "compute",
    "attention",
    "trace",
    "dtype",
    "profile",
    "error",
    "predicts",
    "throughput_basis",
    "repeat_error",
    "telemetry_verdict",
    "repro_command",
    "timestamp",
    "run_id",
)
Scalar = str | int | float | bool | None


def point_id(config: Mapping[str, Any]) -> str:
    """Stable id of a configuration: sha256 of its canonical JSON (sorted keys), first 16 hex digits."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PointRow:
    """A point's row. Metrics absent from `metrics` are unknown (never 0)."""

    point_id: str
    source: str  # measured | modeled | derived
    status: str = "ok"  # ok | failed
    error: str | None = None  # one line, exactly when status is failed
    # configuration: the columns, then the rest of what the point id hashes
    model: str | None = None
    system: str | None = None  # homogeneous | lamina
    compute: str | None = None  # device mix, e.g. "2xH100" or "1xcpu"
    attention: str | None = None  # Lamina's attention mix
    trace: str | None = None
    batch_size: int | None = None
    context_len: int | None = None
    pipeline_batches: int | None = None  # 1 no overlap, 2 ping-pong, n rotational
    dtype: str | None = None
    requests: int | None = None  # modeled: the first N requests of the trace replayed (0 = all of it)
    settings: Mapping[str, Scalar] = field(default_factory=dict)  # e.g. arrival, device, tp, new_tokens
    repeat: int | None = None  # repeat index of a single run; None on an aggregate row
    repeats: int | None = None  # ok repeats folded into an aggregate row; None on a single run
    profile: str | None = None  # the profile a modeled/derived row was calibrated from
    # the numbers
    metrics: Mapping[str, float] = field(default_factory=dict)  # registered metric -> finite value
    ci: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # 95% CI of the median
    pools: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # pool -> POOL_PARTS -> ms/iter
    predicts: str | None = None  # a modeled row's prediction of this measured point id
    rejected_requests: int | None = None  # requests larger than the whole KV capacity
    throughput_basis: str | None = None  # "saturated phase" where throughput excludes the drain
    whole_trace: Mapping[str, float] = field(default_factory=dict)  # whole-trace values of those metrics
    failed_repeats: int | None = None  # aggregate rows: repeats that failed ...
    repeat_error: str | None = None  # ... and the first one's error
    telemetry_verdict: str | None = None  # "valid" or "invalid: <reasons>"
    repro_command: str | None = None
    wall_s: float | None = None  # wall-clock seconds spent on the point
    timestamp: str | None = None  # ISO 8601 UTC, when the row was stored
    run_id: str | None = None

    def __post_init__(self) -> None:
        if not _POINT_ID_RE.match(str(self.point_id)):
            raise ValueError(f"point_id must be 16 lower-case hex digits, got {self.point_id!r}")
        where = f"point {self.point_id}"
        if self.source not in SOURCES:
            raise ValueError(f"{where}: source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.status not in STATUSES:
            raise ValueError(f"{where}: status must be one of {', '.join(STATUSES)}, got {self.status!r}")
        if (self.status == "failed") != bool(self.error):
            raise ValueError(f"{where}: a failed row needs an error message, an ok row must have none")
        for name in _INT_FIELDS:
            _check(where, name, getattr(self, name), int)
        for name in _STR_FIELDS:
            _check(where, name, getattr(self, name), str)
        _check(where, "wall_s", self.wall_s, float)
        for name in ("metrics", "whole_trace", "ci", "pools", "settings"):  # e.g. null in a stored record
            if not isinstance(getattr(self, name), Mapping):
                raise ValueError(f"{where}: {name} must be a mapping, got {getattr(self, name)!r}")
        object.__setattr__(self, "metrics", _metric_map(where, "metrics", self.metrics))
        object.__setattr__(self, "whole_trace", _metric_map(where, "whole_trace", self.whole_trace))
        object.__setattr__(self, "ci", _ci_map(where, self.ci))
        object.__setattr__(self, "pools", _pool_map(where, self.pools))
        object.__setattr__(self, "settings", _settings(where, self.settings))

    def value(self, name: str) -> float | None:
        """The value of registered metric `name`, None when this row lacks it; ValueError for a typo."""
        metric(name)
        return self.metrics.get(name)

    def interval(self, name: str) -> tuple[float, float] | None:
        metric(name)
        return self.ci.get(name)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def config(self) -> dict[str, Scalar]:
        """The configuration columns and settings (what tells points apart), without None values."""
        columns = {k: getattr(self, k) for k in CONFIG_FIELDS if getattr(self, k) is not None}
        return {**columns, **self.settings}

    def replace(self, **changes: Any) -> PointRow:
        return dataclasses.replace(self, **changes)

    # ---- serialisation ----------------------------------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        """A JSON object (what points/<id>.json holds); `from_record` reads it back."""
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("settings", "metrics", "whole_trace"):
            record[name] = dict(sorted(record[name].items()))
        record["ci"] = {k: list(v) for k, v in sorted(self.ci.items())}
        record["pools"] = {p: dict(sorted(parts.items())) for p, parts in sorted(self.pools.items())}
        return {"schema": SCHEMA_VERSION, **record}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> PointRow:
        """A row from `to_record`'s JSON (or a version-1 flat record); ValueError naming what is wrong."""
        if not isinstance(record, Mapping):
            raise ValueError(f"a point record must be a JSON object, got {type(record).__name__}")
        if "extra_json" in record:
            record = upgrade_v1(record)
        record = dict(record)
        schema = record.pop("schema", None)
        if schema != SCHEMA_VERSION:
            raise ValueError(f"point record schema {schema!r}; this version reads {SCHEMA_VERSION} (and 1)")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(record) - names)
        if unknown:
            raise ValueError(f"unknown fields {unknown} in a point record; valid: {', '.join(sorted(names))}")
        if "point_id" not in record or "source" not in record:
            raise ValueError("a point record needs point_id and source")
        if isinstance(record.get("wall_s"), int) and not isinstance(record.get("wall_s"), bool):
            record["wall_s"] = float(record["wall_s"])
        return cls(**record)


# ---- validation helpers ---------------------------------------------------------------------------


def _check(where: str, name: str, value: Any, kind: type) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{where}: {name} takes {kind.__name__}, got {type(value).__name__} {value!r}")
    if kind is float and not math.isfinite(value):
        raise ValueError(f"{where}: {name} must be finite, got {value!r}")


def _number(where: str, what: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where}: {what} must be a finite number, got {value!r}")
    return float(value)


def _metric_map(where: str, what: str, values: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for name, value in values.items():
        if name not in METRICS:
            raise ValueError(f"{where}: unknown metric {name!r} in {what}; registered: {', '.join(METRICS)}")
        out[name] = _number(where, f"{what}.{name}", value)
    return out


def _ci_map(where: str, values: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    out = {}
    for name, pair in values.items():
        if name not in METRICS or not METRICS[name].has_ci:
            raise ValueError(f"{where}: ci for {name!r}, which is not a registered metric with a CI")
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise ValueError(f"{where}: ci.{name} must be [low, high], got {pair!r}")
        low, high = (_number(where, f"ci.{name}", v) for v in pair)
        if low > high:
            raise ValueError(f"{where}: ci.{name} has low {low} > high {high}")
        out[name] = (low, high)
    return out


def _pool_map(where: str, pools: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    out = {}
    for pool, parts in pools.items():
        if not isinstance(parts, Mapping):
            raise ValueError(f"{where}: pools.{pool} must map parts to ms, got {parts!r}")
        bad = sorted(set(parts) - set(POOL_PARTS))
        if bad:
            raise ValueError(f"{where}: pools.{pool} has unknown parts {bad}; valid: {', '.join(POOL_PARTS)}")
        out[str(pool)] = {p: _number(where, f"pools.{pool}.{p}", v) for p, v in parts.items()}
    return out


def _settings(where: str, settings: Mapping[str, Any]) -> dict[str, Scalar]:
    for key, value in settings.items():
        if not isinstance(key, str) or key in CONFIG_FIELDS or not isinstance(value, Scalar):
            raise ValueError(f"{where}: setting {key}={value!r} must be a scalar outside the config columns")
    return dict(settings)


# ---- version 1 records ----------------------------------------------------------------------------

_V1_RENAMES = {"first_error": "repeat_error"}
_V1_FIELDS = (
    "pools",
    "predicts",
    "rejected_requests",
    "throughput_basis",
    "whole_trace",
    "failed_repeats",
    "first_error",
)


def upgrade_v1(flat: Mapping[str, Any]) -> dict[str, Any]:
    """A version-1 flat record (columns, `<metric>_ci_low/_high`, `extra_json`) as a version-2 record."""
    extra = json.loads(flat.get("extra_json") or "{}")
    if not isinstance(extra, dict):
        raise ValueError("extra_json must encode a JSON object")
    fields = {f.name for f in dataclasses.fields(PointRow)}
    record: dict[str, Any] = {"schema": SCHEMA_VERSION}
    metrics, ci = {}, {}
    for key, value in flat.items():
        if value is None or key == "extra_json":
            continue
        if key in METRICS:
            metrics[key] = value
        elif key.endswith("_ci_low") and key[: -len("_ci_low")] in METRICS:
            name = key[: -len("_ci_low")]
            ci[name] = [value, flat.get(f"{name}_ci_high")]
        elif key.endswith("_ci_high") and key[: -len("_ci_high")] in METRICS:
            continue
        elif key in fields:
            record[key] = value
        else:
            raise ValueError(f"unknown column {key!r} in a version-1 point record")
    record["metrics"], record["ci"] = metrics, ci
    settings = {}
    for key, value in extra.items():
        if key in _V1_FIELDS:
            record[_V1_RENAMES.get(key, key)] = value
        else:
            settings[key] = value
    record["settings"] = settings
    return record
