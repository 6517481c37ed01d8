"""The GPU check's summary: the environment it ran in, summary.json, and a plain-text table of the steps.

summary.json holds every step's status, wall time, time box, error or skip reason, details and numbers
(value, unit, source). It is written atomically (`results.files.atomic_write_json`) after every step, so a
run stopped at any point leaves a complete file describing the steps so far.
"""

from __future__ import annotations

import platform
import socket
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lamina_bench.catalog.local import nvml_driver_version
from lamina_bench.gpucheck.records import StepResult, one_line
from lamina_bench.gpucheck.sizes import CheckSizes
from lamina_bench.results.files import atomic_write_json
from lamina_bench.results.manifest import _jsonable, detect_devices, git_state, package_versions

FORMAT = "lamina-bench-gpucheck/2"
SUMMARY_NAME = "summary.json"


def environment(device: str) -> dict[str, Any]:
    """Device, driver, package versions and git state; each probe on its own, so one failure loses only it.

    The probes are the run manifest's (`results.manifest`); on CUDA torch's view of device 0 is added.
    """
    env: dict[str, Any] = {"device": device, "host": socket.gethostname(), "platform": platform.platform()}
    probes: dict[str, Callable[[], Any]] = {
        "versions": package_versions,
        "git": git_state,
        "nvidia_driver": nvml_driver_version,
        "devices": detect_devices,
    }
    if device == "cuda":
        probes["cuda_device"] = _cuda_device
    for key, probe in probes.items():
        try:
            env[key] = probe()
        except Exception as exc:  # noqa: BLE001 - record what could not be read
            env[key] = f"unavailable ({one_line(exc)})"
    return env


def _cuda_device() -> dict[str, Any]:
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "cuda": torch.version.cuda,
        "memory_bytes": props.total_memory,
        "sm_count": props.multi_processor_count,
        "capability": f"{props.major}.{props.minor}",
    }


def summary_dict(
    results: Sequence[StepResult],
    sizes: CheckSizes,
    env: Mapping[str, Any],
    settings: Mapping[str, Any],
    started: str,
    wall_s: float,
    note: str | None = None,
) -> dict[str, Any]:
    """The summary as plain JSON values. status: failed when a step failed or a note (hard stop) is set."""
    failed = [r.name for r in results if r.status == "failed"]
    return _jsonable(
        {
            "format": FORMAT,
            "status": "failed" if failed or note else "ok",
            "failed_steps": failed,
            "note": note,
            "started_utc": started,
            "wall_s": wall_s,
            "settings": settings,
            "sizes": sizes,
            "environment": env,
            "steps": results,
        }
    )


def write_summary(out_dir: Path, summary: Mapping[str, Any]) -> Path:
    path = out_dir / SUMMARY_NAME
    atomic_write_json(path, summary)
    return path


def summary_table(summary: Mapping[str, Any]) -> str:
    """A short plain-text table of the steps: status, wall time, and the first numbers or the error."""
    lines = [f"{'step':<17} {'status':<8} {'wall_s':>7}  numbers / error"]
    for step in summary["steps"]:
        numbers = ", ".join(
            f"{k}={v['value']:.4g}{unit_suffix(v['unit'])} ({v['source'][0]})"
            for k, v in list(step["numbers"].items())[:3]
        )
        text = step["error"] or step["reason"] or numbers or step["details"].get("last_line", "")
        lines.append(f"{step['name']:<17} {step['status']:<8} {step['wall_s']:>7.1f}  {text}")
    return "\n".join(lines)


def unit_suffix(unit: str) -> str:
    return "" if unit == "1" else f" {unit}"  # "1": a dimensionless ratio
