"""The results store: one run folder, written so that a crash loses nothing.

Layout of `results/<run_id>/`:
    manifest.json       spec, command line, git commit and dirty flag, package versions, devices, driver,
                        host, start and end time
    points/<id>.json    one PointRow per finished point (results/row.py), written atomically the moment it
                        finishes: the rows of the run, and the only thing read back
    points.parquet      the same rows as one flat table (results/table.py), exported by finalize() for
                        analysis; never read back, so it cannot disagree with the rows
    telemetry/part-*.parquet, telemetry.parquet     the telemetry table (results/telemetry.py)
    requests/part-*.parquet,  requests.parquet      optional per-request records
    .lock               held (fcntl.flock) by the one process writing the run; released when it exits

Every file is written to a temporary file in the same folder, fsynced, then renamed over the target
(os.replace is atomic on POSIX), so a killed run leaves each file either old or new, never half-written.
Readers skip the temporaries (`.*.tmp`) a kill can leave behind; the next writer removes them. Reading
checks what it reads: a manifest that is not a JSON object with a run_id, a point file that is not a
row, or a Parquet part that does not open is a one-line UserInputError naming the file.
`add_points` stores a batch of rows the same way with one flush for the whole batch.

A row's `point_id` is unique within a run: hash everything that tells rows apart (mode/source, repeat).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import secrets
import shutil
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow

from lamina_bench.errors import UserInputError
from lamina_bench.results.files import _fsync_dir, atomic_write_json, atomic_write_parquet
from lamina_bench.results.manifest import build_manifest, detect_devices, utc_now
from lamina_bench.results.paths import check_output_folder
from lamina_bench.results.row import PointRow
from lamina_bench.results.table import points_frame
from lamina_bench.results.telemetry import TELEMETRY_COLUMNS, TelemetrySample, samples_frame

_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
LOCK_FILE = ".lock"  # in a run folder: held (flock) by the process writing the run
MAX_NAME_LEN = 200  # run ids and baseline names become folder names (most file systems allow 255 bytes)
_PART_RE = re.compile(r"^part-(\d+)\.parquet$")
# Manifest fields the readers use, and the JSON types they must have when present (None is always fine).
_MANIFEST_TYPES: dict[str, tuple[type, ...]] = {
    "git": (dict,),
    "baseline": (dict,),
    "status": (str,),
    "start_time": (str,),
    "end_time": (str,),
    "host": (str,),
    "command_line": (str,),
    "devices": (list, dict),
}


def check_run_id(run_id: object, what: str = "run id") -> str:
    """`run_id` if it is a usable folder name (letters, digits, '.', '_', '-'; no slashes, no leading dot,
    at most MAX_NAME_LEN characters), else UserInputError naming what is valid."""
    if not isinstance(run_id, str) or not _RUN_ID_RE.match(run_id) or len(run_id) > MAX_NAME_LEN:
        raise UserInputError(
            f"{what} {run_id!r} must be letters, digits, '.', '_' or '-' (no slashes; not starting with '.' "
            f"or '-'; 1-{MAX_NAME_LEN} characters)"
        )
    return run_id


class RunStore:
    """One run folder. Single writer: one process adds points (measured runs write from rank 0)."""

    def __init__(self, path: str | Path, manifest: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.manifest = dict(manifest)
        self._lock = threading.Lock()
        self._writer_fd: int | None = None

    # the single writer ------------------------------------------------------------------------------

    def lock(self) -> RunStore:
        """Become the only writer of this run folder: an exclusive fcntl.flock on its `.lock` file, held
        until unlock() or the process ends (the kernel releases it even after SIGKILL). UserInputError
        when another process holds it: two sweeps never write one run folder at once."""
        if self._writer_fd is not None:
            return self
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserInputError(
                f"run folder {self.path} is being written by another lamina-bench process (pid {holder}); "
                "wait for it to end (then --resume continues the run) or pick another --run-id"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._writer_fd = fd
        for tmp in self.path.rglob(".*.tmp"):  # temporaries of a killed writer: never part of the run
            tmp.unlink(missing_ok=True)
        return self

    def unlock(self) -> None:
        if self._writer_fd is not None:
            os.close(self._writer_fd)  # closing the descriptor releases the flock
            self._writer_fd = None

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

        devices: JSON-able description; None detects them (catalog.local.local_devices).
        """
        if run_id is None:
            run_id = f"{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
        check_run_id(run_id)
        return cls._create_at(Path(root) / run_id, run_id, spec, argv, devices)

    @classmethod
    def _create_at(
        cls, path: Path, run_id: str, spec: Any, argv: Sequence[str] | None, devices: Any
    ) -> RunStore:
        exists = UserInputError(
            f"run folder {path} already exists; resume it (--resume) or pick another run id"
        )
        if path.exists():
            raise exists
        argv = list(sys.argv) if argv is None else list(argv)
        manifest = build_manifest(run_id, spec, argv, detect_devices() if devices is None else devices)
        check_output_folder(path.parent, "the results folder")
        try:
            path.mkdir(parents=True)  # atomic: of two processes creating the same run, one gets here
        except FileExistsError:
            raise exists from None
        try:
            (path / "points").mkdir()
            atomic_write_json(path / "manifest.json", manifest)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)  # no half-made run folder
            raise
        return cls(path, manifest)

    @classmethod
    def open(cls, path: str | Path) -> RunStore:
        path = Path(path)
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise UserInputError(f"{path} is not a run folder: it has no manifest.json")
        return cls(path, read_manifest(manifest_path))

    # points -------------------------------------------------------------------------------------

    def add_point(self, row: PointRow, *, replace: bool = False) -> PointRow:
        """Persist one finished point now (points/<point_id>.json, atomically); returns the stored row.

        run_id and timestamp are filled in when missing. Storing a point_id twice is an error unless
        replace=True (e.g. a failed point rerun).
        """
        stored = row.replace(run_id=row.run_id or self.run_id, timestamp=row.timestamp or utc_now())
        target = self.path / "points" / f"{stored.point_id}.json"
        with self._lock:
            if target.exists() and not replace:
                raise ValueError(
                    f"point {stored.point_id} is already stored in {self.path}; pass replace=True"
                )
            target.parent.mkdir(exist_ok=True)
            atomic_write_json(target, stored.to_record())
        return stored

    def add_points(self, rows: Sequence[PointRow]) -> list[PointRow]:
        """Persist many finished points at once (points/<point_id>.json each), as atomic as `add_point` but
        with one flush for the batch instead of one fsync per row: every row goes to its own temporary file
        first, one os.sync() makes them all durable, only then is each renamed into place, and the folder
        is fsynced once. A crash at any moment leaves each row absent (a `.*.tmp` file, which readers skip)
        or whole, never half-written. A point_id stored already, or twice in `rows`, is an error and
        nothing is written.
        """
        stored = [r.replace(run_id=r.run_id or self.run_id, timestamp=r.timestamp or utc_now()) for r in rows]
        folder = self.path / "points"
        with self._lock:
            seen: set[str] = set()
            for row in stored:
                if row.point_id in seen or (folder / f"{row.point_id}.json").exists():
                    raise ValueError(f"point {row.point_id} is stored twice in {self.path}")
                seen.add(row.point_id)
            folder.mkdir(exist_ok=True)
            temps = []
            try:
                for row in stored:
                    tmp = folder / f".{row.point_id}.json.{secrets.token_hex(4)}.tmp"
                    temps.append(tmp)
                    with open(tmp, "x") as handle:  # "x": never an existing file; mode from the umask
                        json.dump(row.to_record(), handle, indent=1, sort_keys=True, allow_nan=False)
                        handle.write("\n")
                os.sync()  # every temporary file on disk before any rename makes it visible
                for row, tmp in zip(stored, temps, strict=True):
                    os.replace(tmp, folder / f"{row.point_id}.json")
            except BaseException:
                for tmp in temps:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                raise
            _fsync_dir(folder)  # the renames themselves survive a power cut
        return stored

    def rows(self) -> list[PointRow]:
        """Every stored point, ordered by timestamp then point_id; UserInputError naming a bad file."""
        folder = self.path / "points"
        if not folder.is_dir():
            raise UserInputError(f"{self.path} has no points/ folder: not a run folder, or a damaged one")
        rows = [read_point(file) for file in sorted(folder.glob("[0-9a-f]*.json"))]
        return sorted(rows, key=lambda r: (r.timestamp or "", r.point_id))

    def points(self) -> pd.DataFrame:
        """The stored rows as a flat table (results/table.py)."""
        return points_frame(self.rows())

    def finished_point_ids(self, include_failed: bool = True) -> set[str]:
        """Point ids already stored (what `--resume` skips); include_failed=False to rerun failures."""
        return {r.point_id for r in self.rows() if include_failed or r.ok}

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
            numbers = [int(m.group(1)) for p in folder.iterdir() if (m := _PART_RE.match(p.name))]
            atomic_write_parquet(folder / f"part-{max(numbers, default=-1) + 1:06d}.parquet", frame)

    def _table(self, kind: str) -> pd.DataFrame | None:
        """Parts if any (the source of truth while running), else the consolidated file, else None.
        UserInputError naming the file when one is not a readable Parquet table."""
        parts = sorted((self.path / kind).glob("part-*.parquet"))
        if parts:
            return pd.concat([_read_parquet(p) for p in parts], ignore_index=True)
        single = self.path / f"{kind}.parquet"
        return _read_parquet(single) if single.is_file() else None

    def telemetry(self) -> pd.DataFrame:
        table = self._table("telemetry")
        if table is None:
            columns = {"run_id": "string", **TELEMETRY_COLUMNS}
            return pd.DataFrame(columns=list(columns)).astype(columns)
        return self._checked_telemetry(table)

    def _checked_telemetry(self, table: pd.DataFrame) -> pd.DataFrame:
        missing = sorted(set(TELEMETRY_COLUMNS) - set(table.columns))
        if missing:
            raise UserInputError(
                f"{self.path}: the telemetry table lacks columns {', '.join(missing)}; not written by "
                "lamina-bench, or damaged (remove telemetry/ and telemetry.parquet to read the rest)"
            )
        return table

    def requests(self) -> pd.DataFrame | None:
        return self._table("requests")

    # end of run -----------------------------------------------------------------------------------

    def mark_interrupted(self) -> None:
        """Record in the manifest that the writer stopped on Ctrl-C or SIGTERM (unless it had finished);
        `--resume` continues such a run like a killed one."""
        current = read_manifest(self.path / "manifest.json")
        if current.get("status") != "finished":
            self.manifest.update(status="interrupted", end_time=utc_now())
            atomic_write_json(self.path / "manifest.json", self.manifest)

    def finalize(self, status: str = "finished") -> None:
        """Consolidate points/telemetry/requests to single Parquet files and close the manifest."""
        rows = self.rows()
        atomic_write_parquet(self.path / "points.parquet", points_frame(rows))
        for kind in ("telemetry", "requests"):
            table = self._table(kind)
            if table is not None:
                atomic_write_parquet(self.path / f"{kind}.parquet", table)
        self.manifest.update(
            status=status,
            end_time=utc_now(),
            points_ok=sum(r.ok for r in rows),
            points_failed=sum(not r.ok for r in rows),
        )
        atomic_write_json(self.path / "manifest.json", self.manifest)


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError, pyarrow.ArrowException) as exc:
        raise UserInputError(f"{path}: not a readable Parquet table ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def read_manifest(path: Path) -> dict[str, Any]:
    """A run's manifest.json, checked: a JSON object with a run_id and the field types readers rely on;
    UserInputError (one line, naming the file) otherwise."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserInputError(f"{path}: not a readable run manifest ({_one_line(exc)})") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: a run manifest is a JSON object, got {type(data).__name__}")
    run_id = data.get("run_id")
    if not isinstance(run_id, str) or not run_id:
        raise UserInputError(f"{path}: the manifest has no run_id (a non-empty string), got {run_id!r}")
    for key, types in _MANIFEST_TYPES.items():
        value = data.get(key)
        if value is not None and not isinstance(value, types):
            kinds = " or ".join({dict: "an object", list: "a list", str: "a string"}[t] for t in types)
            raise UserInputError(f"{path}: manifest field {key!r} must be {kinds}, got {value!r}")
    return data


def read_point(path: Path) -> PointRow:
    """One points/<id>.json file as a row; UserInputError (one line) when it is not one."""
    try:
        row = PointRow.from_record(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError, TypeError) as exc:
        raise UserInputError(f"{path}: not a valid point row ({' '.join(str(exc).split())})") from None
    if row.point_id != path.stem:
        raise UserInputError(f"{path}: holds point {row.point_id}, not {path.stem}")
    return row
