"""The results store: one schema for measured, modeled and derived rows, written so a crash loses nothing.

Layout of `results/<run_id>/`:
    manifest.json       spec, command line, git commit and dirty flag, package versions, devices, driver,
                        host, start and end time
    points/<id>.json    one file per finished point, written atomically the moment it finishes; the
                        source of truth while a sweep runs (`--resume` lists them)
    points.parquet      the points table (POINT_COLUMNS), consolidated by finalize()
    telemetry/part-*.parquet, telemetry.parquet     the telemetry table (telemetry.TELEMETRY_COLUMNS)
    requests/part-*.parquet,  requests.parquet      optional per-request records

Every file is written to a temporary file in the same folder, fsynced, then renamed over the target
(os.replace is atomic on POSIX), so a killed run leaves each file either old or new, never half-written.
Readers skip the temporaries (`.*.tmp`) a kill can leave behind.

A row's `point_id` is unique within a run: hash everything that tells rows apart (mode/source, repeat).
Missing metrics are NaN / None, never 0.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import io
import json
import math
import os
import platform
import re
import secrets
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from lamina_bench.errors import UserInputError
from lamina_bench.telemetry import TELEMETRY_COLUMNS, TelemetrySample, nvml_driver_version, samples_frame

SCHEMA_VERSION = 1
SOURCES = ("measured", "modeled", "derived")
STATUSES = ("ok", "failed")

# ---- the points schema (column -> pandas dtype; units in names) -------------------------------------

CONFIG_COLUMNS: dict[str, str] = {
    "model": "string",  # catalog slug or bench model name
    "system": "string",  # homogeneous | lamina
    "compute": "string",  # device mix, e.g. "2xH100" (or "cpu")
    "attention": "string",  # lamina only, e.g. "4xH20"
    "trace": "string",  # trace name or synthetic workload name
    "batch_size": "Int64",
    "context_len": "Int64",  # tokens
    "pipeline_batches": "Int64",  # 1 = no overlap, 2 = ping-pong, n = rotational
    "dtype": "string",
    "requests": "Int64",
    "repeat": "Int64",  # repeat index of a single run; missing on an aggregate row
    "repeats": "Int64",  # successful repeats folded into an aggregate row; missing on a single run
}
# Per-decode-iteration times are in ms: dense_ms, attention_ms, network_ms, idle_ms.
METRIC_COLUMNS: tuple[str, ...] = (
    "throughput_tok_per_s",
    "generated_tokens",
    "tbt_p50_ms",
    "tbt_p90_ms",
    "tbt_p99_ms",
    "tbt_mean_ms",
    "mean_batch_size",
    "max_batch_size",
    "cost_usd_per_hour",
    "tokens_per_usd",
    "usd_per_mtok",
    "net_bytes_per_token",
    "net_peak_gbps",
    "dense_ms",
    "attention_ms",
    "network_ms",
    "idle_ms",
    "energy_j",
    "energy_j_per_token",
    "power_w_mean",
    "sm_busy_pct_mean",
    "mem_busy_pct_mean",  # share of TIME memory was busy (NVML utilization.memory), not bytes/s
    "dram_bw_util_pct_mean",
)
# Metrics that vary between repeats get a distribution-free 95% CI of the median on aggregate rows.
CI_METRICS: tuple[str, ...] = (
    "throughput_tok_per_s",
    "tbt_p50_ms",
    "tbt_p90_ms",
    "tbt_p99_ms",
    "tbt_mean_ms",
    "tokens_per_usd",
    "usd_per_mtok",
    "dense_ms",
    "attention_ms",
    "network_ms",
    "idle_ms",
    "energy_j",
)
POINT_COLUMNS: dict[str, str] = {
    "run_id": "string",
    "point_id": "string",
    **CONFIG_COLUMNS,
    "source": "string",  # measured | modeled | derived
    "profile": "string",  # the profile a modeled/derived row was calibrated from
    "status": "string",  # ok | failed
    "error": "string",  # one line, set exactly when status == failed
    **dict.fromkeys(METRIC_COLUMNS, "float64"),
    **{f"{m}_ci{side}": "float64" for m in CI_METRICS for side in ("_low", "_high")},
    "telemetry_verdict": "string",  # "valid" or "invalid: <reasons>" (telemetry.combine_summaries)
    "repro_command": "string",  # the command line that reproduces this row
    "wall_s": "float64",  # wall-clock seconds spent on the point
    "timestamp": "string",  # ISO 8601 UTC, when the row was stored
    "extra_json": "string",  # JSON object of point-specific fields outside the schema
}
# Columns that may differ between two stores of the same point without it being a conflict.
_VOLATILE_COLUMNS = ("run_id", "wall_s", "timestamp", "repro_command")
_POINT_ID_RE = re.compile(r"^[0-9a-f]{16}$")
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def point_id(config: Mapping[str, Any]) -> str:
    """Stable id of a configuration: sha256 of its canonical JSON (sorted keys), first 16 hex digits.

    Same algorithm as sweep.point_id, so ids agree whichever module computes them.
    """
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# ---- statistics on repeats --------------------------------------------------------------------------


@dataclass(frozen=True)
class MedianCI:
    """Median with a distribution-free confidence interval [low, high] made of two order statistics.

    `coverage` is the exact probability that [low, high] contains the true median for continuous data:
    1 - 2 * P(Binomial(n, 1/2) <= k - 1) for order statistics k and n + 1 - k. It is >= 0.95 for
    n >= 6; for n = 3..5 the widest interval (min, max) reaches only 0.75 .. 0.9375, and says so.
    """

    median: float
    low: float
    high: float
    coverage: float
    n: int

    def __post_init__(self) -> None:
        if not self.low <= self.median <= self.high:
            raise ValueError(
                f"MedianCI needs low <= median <= high, got {self.low}, {self.median}, {self.high}"
            )
        if not 0.0 < self.coverage <= 1.0:
            raise ValueError(f"MedianCI coverage must be in (0, 1], got {self.coverage}")


def _binomial_half_cdf(k: int, n: int) -> float:
    """P(Binomial(n, 1/2) <= k)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def median_ci95(values: Sequence[float]) -> MedianCI | None:
    """Median and 95% CI of the median by order statistics (binomial; no distribution assumed).

    Picks the largest k with coverage of [x_(k), x_(n+1-k)] >= 0.95 (x sorted, 1-based); with fewer than
    6 values that is impossible and the interval is (min, max) with its lower coverage. None for fewer
    than 3 values. Source: e.g. Conover, "Practical Nonparametric Statistics", 3rd ed., sec. 3.2.
    """
    xs = sorted(float(v) for v in values)
    if any(math.isnan(x) for x in xs):
        raise ValueError("median_ci95: values contain NaN; drop failed repeats first")
    n = len(xs)
    if n < 3:
        return None
    k = 1
    while k + 1 <= n // 2 and 1 - 2 * _binomial_half_cdf(k, n) >= 0.95:  # coverage with k + 1
        k += 1
    coverage = 1 - 2 * _binomial_half_cdf(k - 1, n)
    return MedianCI(statistics.median(xs), xs[k - 1], xs[n - k], coverage, n)


def aggregate_repeats(rows: Sequence[Mapping[str, Any]], aggregate_point_id: str) -> dict[str, Any]:
    """One row from the repeats of a point: medians of the ok repeats, 95% CIs where >= 3 of them.

    All rows must share the configuration (CONFIG_COLUMNS except repeat/repeats), source and profile.
    The result has repeat missing, repeats = number of ok repeats, status failed only if all failed.
    """
    if not rows:
        raise ValueError("aggregate_repeats: no rows")
    shared = [c for c in CONFIG_COLUMNS if c not in ("repeat", "repeats")] + ["source", "profile"]
    first = rows[0]
    for row in rows[1:]:
        differs = [c for c in shared if _normalize_scalar(row.get(c)) != _normalize_scalar(first.get(c))]
        if differs:
            raise ValueError(
                f"aggregate_repeats: rows differ in {', '.join(differs)}; not repeats of one point"
            )
    ok = [r for r in rows if r.get("status") == "ok"]
    failed = [r for r in rows if r.get("status") != "ok"]
    walls = [float(r["wall_s"]) for r in rows if _present(r.get("wall_s"))]
    out: dict[str, Any] = {c: first.get(c) for c in shared}
    out.update(
        point_id=aggregate_point_id, repeat=None, repeats=len(ok), repro_command=first.get("repro_command")
    )
    out.update(wall_s=sum(walls) if walls else None, status="ok", error=None)
    for metric in METRIC_COLUMNS:
        values = [float(r[metric]) for r in ok if _present(r.get(metric))]
        out[metric] = statistics.median(values) if values else None
        ci = median_ci95(values) if metric in CI_METRICS else None
        if ci is not None:
            out[f"{metric}_ci_low"], out[f"{metric}_ci_high"] = ci.low, ci.high
    if not ok:
        out.update(status="failed", error=f"all {len(rows)} repeats failed: {failed[0].get('error')}")
    elif failed:
        out["extra_json"] = json.dumps({"failed_repeats": len(failed), "first_error": failed[0].get("error")})
    return out


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and value is not pd.NA


# ---- row validation ---------------------------------------------------------------------------------


def _normalize_scalar(value: Any) -> Any:
    """NaN / pd.NA -> None; numpy scalars -> Python scalars."""
    if value is None or value is pd.NA:
        return None
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()  # numpy scalar
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _check_type(column: str, dtype: str, value: Any) -> Any:
    if value is None:
        return None
    if dtype == "string":
        if not isinstance(value, str):
            raise ValueError(f"points column {column} takes a string, got {type(value).__name__} {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"points column {column} takes a number, got {type(value).__name__} {value!r}")
    if dtype == "Int64":
        if float(value) != int(value):
            raise ValueError(f"points column {column} takes an integer, got {value!r}")
        return int(value)
    return float(value)


def normalize_point(row: Mapping[str, Any]) -> dict[str, Any]:
    """A complete, validated points row (every POINT_COLUMNS key; missing values None).

    Raises ValueError naming the problem: unknown column, wrong type, bad point_id/source/status, an error
    message missing on a failed row or present on an ok row. Put other fields in `extra_json`.
    """
    unknown = sorted(set(row) - set(POINT_COLUMNS))
    if unknown:
        raise ValueError(f"unknown points columns {unknown}; see results.POINT_COLUMNS or use extra_json")
    out = {c: _check_type(c, t, _normalize_scalar(row.get(c))) for c, t in POINT_COLUMNS.items()}
    if not _POINT_ID_RE.match(out["point_id"] or ""):
        raise ValueError(
            f"point_id must be 16 lower-case hex digits (results.point_id), got {out['point_id']!r}"
        )
    if out["source"] not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {out['source']!r}")
    if out["status"] not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {out['status']!r}")
    if (out["status"] == "failed") != bool(out["error"]):
        raise ValueError(
            f"point {out['point_id']}: a failed row needs an error message, an ok row must have none"
        )
    if out["extra_json"] is not None and not isinstance(json.loads(out["extra_json"]), dict):
        raise ValueError(f"point {out['point_id']}: extra_json must encode a JSON object")
    return out


def points_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows (already normalized) as the points table, with POINT_COLUMNS order and dtypes."""
    frame = pd.DataFrame(list(rows), columns=list(POINT_COLUMNS))
    return frame.astype(POINT_COLUMNS)


def _frame_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _normalize_scalar(v) for k, v in rec.items()} for rec in frame.to_dict(orient="records")]


# ---- atomic files -----------------------------------------------------------------------------------


_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask (there is no getter) and put it back


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a partial one.

    Temp file in the same folder (same file system, so the rename is atomic), fsync, os.replace, then
    fsync the folder so the rename itself survives a power cut.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode open() would
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened or fsynced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n").encode())


def atomic_write_parquet(path: str | Path, frame: pd.DataFrame) -> None:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    atomic_write_bytes(path, buffer.getvalue())


# ---- run manifest -----------------------------------------------------------------------------------

_PACKAGES = ("torch", "triton", "transformers", "numpy", "pandas", "pyarrow", "nvidia-ml-py", "lamina-bench")


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _jsonable(obj: Any) -> Any:
    """Dataclasses, mappings and sequences to plain JSON values; anything else to str."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return str(obj)


def package_versions() -> dict[str, str | None]:
    """Installed versions (from package metadata, nothing imported); None where not installed."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(repo: str | Path | None = None) -> dict[str, Any]:
    """{"commit", "dirty", "error"} of the git checkout holding this package (tracked files only)."""
    repo = Path(repo) if repo is not None else Path(__file__).resolve().parents[1]
    try:
        commit = _git(repo, "rev-parse", "HEAD")
        dirty = bool(_git(repo, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError) as exc:
        return {"commit": None, "dirty": None, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    return {"commit": commit, "dirty": dirty, "error": None}


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20, check=True
    )
    return done.stdout.strip()


def detect_devices() -> Any:
    """lamina_bench.hardware.local_devices() as JSON, or {"error": ...} when it cannot be used."""
    try:
        from lamina_bench.hardware import local_devices

        return _jsonable(local_devices())
    except Exception as exc:  # the manifest must still be written
        return {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}


def build_manifest(run_id: str, spec: Any, argv: Sequence[str], devices: Any) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "status": "running",
        "start_time": _utc_now(),
        "end_time": None,
        "spec": _jsonable(spec),
        "argv": list(argv),
        "command_line": shlex.join(argv),
        "git": git_state(),
        "versions": package_versions(),
        "devices": _jsonable(devices),
        "nvidia_driver": nvml_driver_version(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
    }


# ---- the store --------------------------------------------------------------------------------------


class RunStore:
    """One run folder. Single writer: one process adds points (measured runs write from rank 0)."""

    def __init__(self, path: str | Path, manifest: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.manifest = dict(manifest)
        self._lock = threading.Lock()

    @property
    def run_id(self) -> str:
        return str(self.manifest["run_id"])

    @classmethod
    def create(
        cls,
        root: str | Path,
        run_id: str | None = None,
        spec: Any = None,
        argv: Sequence[str] | None = None,
        *,
        devices: Any = None,
    ) -> RunStore:
        """Make `root/<run_id>/` (run_id default: UTC time + random suffix) and write its manifest.

        devices: JSON-able description; None detects them (lamina_bench.hardware.local_devices()).
        """
        run_id = run_id or f"{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
        if not _RUN_ID_RE.match(run_id):
            raise UserInputError(f"run id {run_id!r} must be letters, digits, '.', '_' or '-' (no slashes)")
        return cls._create_at(Path(root) / run_id, run_id, spec, argv, devices)

    @classmethod
    def _create_at(
        cls, path: Path, run_id: str, spec: Any, argv: Sequence[str] | None, devices: Any
    ) -> RunStore:
        if path.exists():
            raise UserInputError(
                f"run folder {path} already exists; resume it (--resume) or pick another run id"
            )
        path.mkdir(parents=True)
        (path / "points").mkdir()
        argv = list(sys.argv) if argv is None else list(argv)
        manifest = build_manifest(run_id, spec, argv, detect_devices() if devices is None else devices)
        atomic_write_json(path / "manifest.json", manifest)
        return cls(path, manifest)

    @classmethod
    def open(cls, path: str | Path) -> RunStore:
        path = Path(path)
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise UserInputError(f"{path} is not a run folder: it has no manifest.json")
        return cls(path, json.loads(manifest_path.read_text()))

    # points -------------------------------------------------------------------------------------

    def add_point(self, row: Mapping[str, Any], *, replace: bool = False) -> dict[str, Any]:
        """Validate and persist one finished point now (points/<point_id>.json, atomically).

        run_id and timestamp are filled in when missing. Storing a point_id twice is an error unless
        replace=True (e.g. a failed point rerun). Returns the stored row.
        """
        filled = dict(row)
        for key, default in (("run_id", self.run_id), ("timestamp", _utc_now())):
            if _normalize_scalar(filled.get(key)) is None:
                filled[key] = default
        stored = normalize_point(filled)
        target = self.path / "points" / f"{stored['point_id']}.json"
        with self._lock:
            if target.exists() and not replace:
                raise ValueError(
                    f"point {stored['point_id']} is already stored in {self.path}; pass replace=True"
                )
            target.parent.mkdir(exist_ok=True)
            atomic_write_json(target, stored)
        return stored

    def _json_points(self) -> dict[str, dict[str, Any]]:
        rows = {}
        for file in sorted((self.path / "points").glob("[0-9a-f]*.json")):
            try:
                rows[file.stem] = normalize_point(json.loads(file.read_text()))
            except (ValueError, json.JSONDecodeError) as exc:
                raise ValueError(f"{file}: not a valid point row ({exc})") from exc
        return rows

    def _point_rows(self) -> dict[str, dict[str, Any]]:
        """Union of points.parquet and points/*.json by point_id; the JSON files win."""
        rows: dict[str, dict[str, Any]] = {}
        parquet = self.path / "points.parquet"
        if parquet.is_file():
            rows = {r["point_id"]: r for r in _frame_records(pd.read_parquet(parquet))}
        rows.update(self._json_points())
        return rows

    def points(self) -> pd.DataFrame:
        """The points table (every finished point), ordered by timestamp then point_id."""
        rows = sorted(self._point_rows().values(), key=lambda r: (r["timestamp"] or "", r["point_id"]))
        return points_frame(rows)

    def finished_point_ids(self, include_failed: bool = True) -> set[str]:
        """Point ids already stored (what `--resume` skips); include_failed=False to rerun failures."""
        rows = self._point_rows()
        return {pid for pid, r in rows.items() if include_failed or r["status"] == "ok"}

    # telemetry and per-request records -------------------------------------------------------------

    def add_telemetry(self, rows: Sequence[TelemetrySample] | pd.DataFrame) -> None:
        """Append telemetry samples (TelemetrySample list or a TELEMETRY_COLUMNS frame) as one part file."""
        frame = rows if isinstance(rows, pd.DataFrame) else samples_frame(list(rows))
        missing = sorted(set(TELEMETRY_COLUMNS) - set(frame.columns))
        if missing:
            raise ValueError(f"telemetry rows lack columns {missing}; see telemetry.TELEMETRY_COLUMNS")
        frame = frame[list(TELEMETRY_COLUMNS)].astype(TELEMETRY_COLUMNS)
        if "run_id" not in frame.columns:
            frame.insert(0, "run_id", pd.array([self.run_id] * len(frame), dtype="string"))
        self._add_part("telemetry", frame)

    def add_requests(self, rows: Sequence[Mapping[str, Any]] | pd.DataFrame) -> None:
        """Append per-request records (free-form columns; a point_id column ties them to points)."""
        frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
        if len(frame) and "point_id" not in frame.columns:
            raise ValueError("request records need a point_id column to tie them to their point")
        self._add_part("requests", frame)

    def _add_part(self, kind: str, frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        folder = self.path / kind
        with self._lock:
            folder.mkdir(exist_ok=True)
            numbers = [int(p.stem.split("-")[1]) for p in folder.glob("part-*.parquet")]
            atomic_write_parquet(folder / f"part-{max(numbers, default=-1) + 1:06d}.parquet", frame)

    def _table(self, kind: str) -> pd.DataFrame | None:
        """Parts if any (the source of truth while running), else the consolidated file, else None."""
        parts = sorted((self.path / kind).glob("part-*.parquet"))
        if parts:
            return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
        single = self.path / f"{kind}.parquet"
        return pd.read_parquet(single) if single.is_file() else None

    def telemetry(self) -> pd.DataFrame:
        table = self._table("telemetry")
        if table is None:
            columns = {"run_id": "string", **TELEMETRY_COLUMNS}
            return pd.DataFrame(columns=list(columns)).astype(columns)
        return table

    def requests(self) -> pd.DataFrame | None:
        return self._table("requests")

    # end of run -----------------------------------------------------------------------------------

    def finalize(self, status: str = "finished") -> None:
        """Consolidate points/telemetry/requests to single Parquet files and close the manifest."""
        points = self.points()
        atomic_write_parquet(self.path / "points.parquet", points)
        for kind in ("telemetry", "requests"):
            table = self._table(kind)
            if table is not None:
                atomic_write_parquet(self.path / f"{kind}.parquet", table)
        counts = points["status"].value_counts()
        self.manifest.update(
            status=status,
            end_time=_utc_now(),
            points_ok=int(counts.get("ok", 0)),
            points_failed=int(counts.get("failed", 0)),
        )
        atomic_write_json(self.path / "manifest.json", self.manifest)


# ---- merging shards ---------------------------------------------------------------------------------


def _comparable(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in _VOLATILE_COLUMNS}


def merge_runs(paths: Sequence[str | Path], out: str | Path, argv: Sequence[str] | None = None) -> RunStore:
    """Union of the points (and telemetry, requests) of several runs, e.g. the shards of one sweep.

    A point_id present in several runs must agree on every column except run_id, wall_s, timestamp and
    repro_command, else UserInputError. Rows keep the run_id of the run that produced them.
    """
    if not paths:
        raise UserInputError("merge_runs: give at least one run folder")
    stores = [RunStore.open(p) for p in paths]
    merged: dict[str, dict[str, Any]] = {}
    origin: dict[str, Path] = {}
    for store in stores:
        for pid, row in store._point_rows().items():
            if pid in merged and _comparable(merged[pid]) != _comparable(row):
                differs = [k for k, v in _comparable(row).items() if merged[pid].get(k) != v]
                raise UserInputError(
                    f"point {pid} differs between {origin[pid]} and {store.path} in {', '.join(differs)}"
                )
            merged.setdefault(pid, row)
            origin.setdefault(pid, store.path)
    out = Path(out)
    specs = [s.manifest.get("spec") for s in stores]
    spec = specs[0] if all(s == specs[0] for s in specs) else specs
    devices = [s.manifest.get("devices") for s in stores]
    target = RunStore._create_at(out, out.name, spec, argv, devices)
    target.manifest["merged_from"] = [{"path": str(s.path), **_merge_source(s.manifest)} for s in stores]
    for row in merged.values():
        atomic_write_json(target.path / "points" / f"{row['point_id']}.json", row)
    for kind in ("telemetry", "requests"):
        tables = [t for t in (s._table(kind) for s in stores) if t is not None]
        if tables:
            target._add_part(kind, pd.concat(tables, ignore_index=True))
    target.finalize()
    return target


def _merge_source(manifest: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("run_id", "status", "start_time", "end_time", "git", "command_line", "host")
    return {k: manifest.get(k) for k in keys}


__all__ = [
    "CI_METRICS",
    "CONFIG_COLUMNS",
    "METRIC_COLUMNS",
    "POINT_COLUMNS",
    "MedianCI",
    "RunStore",
    "aggregate_repeats",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_parquet",
    "git_state",
    "median_ci95",
    "merge_runs",
    "normalize_point",
    "package_versions",
    "point_id",
    "points_frame",
]
