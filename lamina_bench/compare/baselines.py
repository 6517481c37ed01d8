"""CI baselines: a finished run's points copied into `results/baselines/<device>/`, swapped in atomically."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import secrets
import shutil
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lamina_bench.compare.sides import describe_manifest
from lamina_bench.errors import UserInputError
from lamina_bench.results.files import atomic_write_json
from lamina_bench.results.paths import check_output_folder
from lamina_bench.results.row import PointRow
from lamina_bench.results.store import RunStore, check_run_id

BASELINES_ROOT = Path("results/baselines")


@dataclass(frozen=True)
class BaselineInfo:
    device: str
    path: str
    run_id: str | None
    description: str
    updated_at: str | None
    points_ok: int
    points_failed: int
    sources: Mapping[str, int]


def default_device(store: RunStore, sources: Iterable[str]) -> str:
    """ "modeled" when every point is modeled or derived (no local device measured), else the first GPU's
    name in the manifest (lower-case, spaces -> '-'), else "cpu"."""
    if set(sources) <= {"modeled", "derived"}:
        return "modeled"
    devices = store.manifest.get("devices")
    names = [d.get("name") for d in devices if isinstance(d, Mapping)] if isinstance(devices, list) else []
    gpus = [str(n) for n in names if n and str(n).upper() != "CPU"]
    return re.sub(r"[^a-z0-9._-]+", "-", gpus[0].lower()).strip("-") if gpus else "cpu"


def _check_device(device: str) -> str:
    """A baseline name is a folder name under the root: the run id rule (no slashes, no '..')."""
    return check_run_id(device, "baseline name (--device)")


def _check_root(root: str | Path) -> Path:
    if str(root) == "":
        raise UserInputError("--root is empty; give the baselines folder (default results/baselines)")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserInputError(f"--root {root} is not a folder")
    return root


def _baseline_rows(store: RunStore) -> list[PointRow]:
    status = store.manifest.get("status")
    if status in ("running", "interrupted"):
        raise UserInputError(
            f"{store.path} is still running, was killed or interrupted (manifest status {status!r}); "
            "finish it first (lamina-bench run ... --resume)"
        )
    rows = store.rows()
    if not rows:
        raise UserInputError(f"{store.path} has no points; a baseline needs at least one")
    failed = [r.point_id for r in rows if not r.ok]
    if failed:
        raise UserInputError(
            f"{store.path} has {len(failed)} failed points (e.g. {failed[0]}); rerun them before using it as a baseline"
        )
    return rows


def update_baseline(
    run_dir: str | Path, device: str | None = None, root: str | Path = BASELINES_ROOT
) -> BaselineInfo:
    """Copy a finished run's points (points/<id>.json) and manifest into `root/<device>/`.

    The new folder is written beside the old one with the atomic writers, then swapped in by two
    renames (old -> .<device>.old-*, new -> <device>), so readers see the old baseline or the new one;
    a crash between the renames leaves both complete under their dot-names.
    """
    root = check_output_folder(_check_root(root), "--root")
    if device is not None:
        _check_device(device)
    store = RunStore.open(run_dir)
    rows = _baseline_rows(store)
    device = _check_device(device or default_device(store, (r.source for r in rows)))
    root.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    staging = root / f".{device}.new-{token}"
    try:
        (staging / "points").mkdir(parents=True)
        for row in rows:
            atomic_write_json(staging / "points" / f"{row.point_id}.json", row.to_record())
        manifest = dict(store.manifest)
        manifest["baseline"] = {
            "device": device,
            "source_run": str(store.path),
            "source_run_id": store.run_id,
            "updated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "points": len(rows),
        }
        atomic_write_json(staging / "manifest.json", manifest)
        info = baseline_info(staging)  # reads back what was written: a broken baseline is never swapped in
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _swap_in(staging, root / device, root / f".{device}.old-{token}")
    return dataclasses.replace(info, path=str(root / device))


def _swap_in(staging: Path, target: Path, old: Path) -> None:
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    fd = os.open(target.parent, os.O_RDONLY)  # persist the renames
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    shutil.rmtree(old, ignore_errors=True)


def baseline_info(path: str | Path) -> BaselineInfo:
    store = RunStore.open(path)
    rows = store.rows()
    meta = store.manifest.get("baseline") or {}
    return BaselineInfo(
        device=str(meta.get("device") or Path(path).name),
        path=str(path),
        run_id=store.manifest.get("run_id"),
        description=describe_manifest(store.manifest),
        updated_at=meta.get("updated_at"),
        points_ok=sum(r.ok for r in rows),
        points_failed=sum(not r.ok for r in rows),
        sources=dict(sorted(Counter(r.source for r in rows).items())),
    )


def baseline_folder(device: str, root: str | Path = BASELINES_ROOT) -> Path:
    """`root/<device>`, which must hold a baseline; UserInputError naming the baselines there otherwise."""
    folder = _check_root(root) / _check_device(device)
    if not (folder / "manifest.json").is_file():
        have = ", ".join(b.device for b in list_baselines(root)) or "none"
        raise UserInputError(f"no baseline {device!r} under {root}; baselines there: {have}")
    return folder


def list_baselines(root: str | Path = BASELINES_ROOT) -> list[BaselineInfo]:
    """Every `root/<device>/` holding a manifest, by device name (none when `root` does not exist)."""
    root = _check_root(root)
    if not root.is_dir():
        return []
    folders = sorted(p for p in root.iterdir() if p.is_dir() and (p / "manifest.json").is_file())
    return [baseline_info(p) for p in folders if not p.name.startswith(".")]


def baseline_table(infos: Sequence[BaselineInfo]) -> str:
    if not infos:
        return "no baselines"
    lines = []
    for b in infos:
        sources = ", ".join(f"{n} {s}" for s, n in b.sources.items())
        lines.append(
            f"{b.device}: {b.points_ok} ok, {b.points_failed} failed points ({sources}); {b.description}"
        )
        lines.append(f"  {b.path}")
    return "\n".join(lines)
