"""The run manifest: what ran, from which commit, with which package versions, on which devices."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import platform
import shlex
import socket
import subprocess
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from lamina_bench.catalog.devices import load_catalog
from lamina_bench.catalog.local import local_devices, nvml_driver_version
from lamina_bench.results.row import SCHEMA_VERSION

_PACKAGES = ("torch", "triton", "transformers", "numpy", "pandas", "pyarrow", "nvidia-ml-py", "lamina-bench")


def utc_now() -> str:
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
    repo = Path(repo) if repo is not None else Path(__file__).resolve().parents[2]
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
    """The local devices (catalog.local.local_devices) as JSON, or {"error": ...} when they cannot be read."""
    try:
        return _jsonable(local_devices(load_catalog()))
    except Exception as exc:  # the manifest must still be written
        return {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}


def build_manifest(run_id: str, spec: Any, argv: Sequence[str], devices: Any) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "status": "running",
        "start_time": utc_now(),
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
