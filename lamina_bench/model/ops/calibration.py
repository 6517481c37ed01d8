"""The committed calibration: fitted constants per GPU, and the constants of GPUs without calibration data.

File format (``"format": "lamina-bench-calibration/1"``, JSON; written by `lamina-bench validate
--calibrate`, read here at run time; nothing is fitted at import)::

    {
      "format": "lamina-bench-calibration/1",
      "date": "2026-07-30",                       # when the fit ran
      "command": "lamina-bench validate --calibrate",
      "gpus": {"H100": {"gemm": {"t_fixed_s": {"value": 3.1e-06, "tag": "measured-fit",
                                               "source": "fitted on aic-h100-..., vidur-h100-...",
                                               "date": "2026-07-30"}, ...},
                        "elementwise": {...}, "mode": {...}, "attention": {...},
                        "allreduce": {...}, "p2p": {...}}, ...},
      "fit": {"H100": {"gemm": {"rows": 410, "median_abs_err": 0.05, "files": [...]}, ...}, ...}
    }

A GPU with no calibration data for a family takes that family from the first GPU of its DERIVE_FROM
chain that has it: its constants are tagged `derived` and the equations then use this GPU's own
datasheet peaks (bandwidth, flops, links, SM count), i.e. the parent's times scale by the datasheet
ratios; `ramp_bytes` (bytes in flight) scales with the bandwidth ratio, and the fixed costs the SMs run
(_SCALE_WITH_CLOCK: kernel prologues and tails, per-item work, the CUDA-graph gap) with the ratio of
boost clocks, parent / this GPU: a kernel's fixed work is a number of cycles, so a faster clock runs it
in less time. Where either clock is unpublished they are kept as they are (and say so). NCCL's
latencies are the fabric's (link hops, flags over NVLink / PCIe), not the SMs', and are not scaled.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from lamina_bench.catalog.devices import get_device
from lamina_bench.errors import UserInputError
from lamina_bench.model.ops.attention import ATTENTION_CONSTANTS
from lamina_bench.model.ops.collectives import ALLREDUCE_CONSTANTS, P2P_CONSTANTS
from lamina_bench.model.ops.constants import Constant
from lamina_bench.model.ops.gemm import ELEMENTWISE_CONSTANTS, GEMM_CONSTANTS, MODE_CONSTANTS
from lamina_bench.model.ops.hardware import boost_clock, sm_count
from lamina_bench.results.files import atomic_write_json

CALIBRATION_FORMAT = "lamina-bench-calibration/1"
DEFAULT_CALIBRATION = Path(__file__).resolve().parents[3] / "results" / "validation" / "calibration.json"
FAMILIES: dict[str, tuple[str, ...]] = {
    "gemm": GEMM_CONSTANTS,
    "elementwise": ELEMENTWISE_CONSTANTS,
    "mode": MODE_CONSTANTS,
    "attention": ATTENTION_CONSTANTS,
    "allreduce": ALLREDUCE_CONSTANTS,
    "p2p": P2P_CONSTANTS,
}
# Where a GPU without calibration data takes a family from (first of the chain that has it). Reasoning:
# same die or generation first (H200, H20, H800, H100-PCIe are GH100 parts; A100-40G is GA100), then the
# same memory class (GDDR6 PCIe cards from the A40), then the newest calibrated generation (B200,
# MI300X, TPU from the H100). The A100 and the A40 take what they lack from the H100 / A100.
DERIVE_FROM: dict[str, str] = {
    "H200": "H100", "H20": "H100", "H800": "H100", "H100-PCIe": "H100", "B200": "H100", "MI300X": "H100",
    "TPU-v6e": "H100", "A100-80G": "H100", "A100-40G": "A100-80G", "A40": "A100-80G", "L40S": "A40",
    "L20": "A40", "L4": "A40", "RTX4090": "A40", "A10": "A40",
}  # fmt: skip
ROOT_GPU = "H100"
_SCALE_WITH_BANDWIDTH = {("gemm", "ramp_bytes")}
_SCALE_WITH_CLOCK = {
    ("gemm", "t_fixed_s"), ("mode", "graph_gap_s"), ("attention", "t_fixed_s"), ("attention", "t_item_s"),
    ("attention", "t_wave_s"), ("elementwise", "t_norm_s"), ("elementwise", "t_rope_s"), ("elementwise", "t_act_s"),
    ("elementwise", "t_add_s"), ("elementwise", "per_width_s"),
}  # fmt: skip


@dataclass(frozen=True)
class Calibration:
    date: str
    gpus: Mapping[str, Mapping[str, Mapping[str, Constant]]]  # gpu -> family -> name -> constant
    fit: Mapping[str, object] = field(default_factory=dict)
    command: str = "lamina-bench validate --calibrate"

    def __post_init__(self) -> None:
        for gpu, families in self.gpus.items():
            for family, consts in families.items():
                if family not in FAMILIES:
                    raise UserInputError(f"calibration: {gpu} has unknown family {family!r}")
                missing = set(FAMILIES[family]) - set(consts)
                if missing:
                    raise UserInputError(f"calibration: {gpu} {family} lacks {sorted(missing)}")


def calibration_to_dict(cal: Calibration) -> dict:
    return {
        "format": CALIBRATION_FORMAT,
        "date": cal.date,
        "command": cal.command,
        "gpus": {
            gpu: {fam: {name: c.to_dict() for name, c in consts.items()} for fam, consts in families.items()}
            for gpu, families in sorted(cal.gpus.items())
        },
        "fit": cal.fit,
    }


def calibration_from_dict(data: dict, where: str = "calibration") -> Calibration:
    if data.get("format") != CALIBRATION_FORMAT:
        raise UserInputError(f"{where}: format is {data.get('format')!r}, expected {CALIBRATION_FORMAT!r}")
    try:
        gpus = {
            gpu: {
                fam: {name: Constant.from_dict(c) for name, c in consts.items()}
                for fam, consts in families.items()
            }
            for gpu, families in data["gpus"].items()
        }
        return Calibration(str(data["date"]), gpus, data.get("fit", {}), str(data.get("command", "")))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserInputError(f"{where}: malformed ({type(exc).__name__}: {exc})") from None


def write_calibration(cal: Calibration, path: str | Path = DEFAULT_CALIBRATION) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, calibration_to_dict(cal))
    return path


@lru_cache(maxsize=8)
def _load(path: str, mtime: float) -> Calibration:
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise UserInputError(f"calibration file {path} is not valid JSON: {exc}") from None
    return calibration_from_dict(data, path)


def load_calibration(path: str | Path | None = None) -> Calibration | None:
    """The calibration file (default: the committed one), or None when there is none."""
    path = Path(path or DEFAULT_CALIBRATION)
    if not path.is_file():
        return None
    return _load(str(path), path.stat().st_mtime)


@dataclass(frozen=True)
class GpuConstants:
    """Every family's constants for one GPU, own or derived, and which GPU each family came from."""

    gpu: str
    constants: Mapping[str, Mapping[str, Constant]]
    origin: Mapping[str, str]  # family -> GPU whose calibration it is

    def values(self, family: str) -> dict[str, float]:
        return {name: c.value for name, c in self.constants[family].items()}

    @property
    def derived(self) -> bool:
        return any(src != self.gpu for src in self.origin.values())

    @property
    def sms(self) -> tuple[int, str] | None:
        """The SM count of this GPU, else of the GPU its attention family comes from."""
        return sm_count(self.gpu) or sm_count(self.origin.get("attention", ROOT_GPU))


def chain(gpu: str) -> list[str]:
    """`gpu`, then its DERIVE_FROM parents, ending at ROOT_GPU."""
    out = [gpu]
    while out[-1] in DERIVE_FROM and DERIVE_FROM[out[-1]] not in out:
        out.append(DERIVE_FROM[out[-1]])
    if ROOT_GPU not in out:
        out.append(ROOT_GPU)
    return out


def _bandwidth_ratio(target: str, source: str) -> float:
    try:
        a, b = get_device(target), get_device(source)
    except UserInputError:
        return 1.0
    if a.mem_bandwidth_bytes_per_s is None or b.mem_bandwidth_bytes_per_s is None:
        return 1.0
    return a.mem_bandwidth_bytes_per_s / b.mem_bandwidth_bytes_per_s


def clock_ratio(target: str, source: str) -> float | None:
    """Boost clock of `source` / that of `target` (how much faster `target` runs a fixed number of
    cycles); None when either clock is unpublished."""
    a, b = boost_clock(target), boost_clock(source)
    return None if a is None or b is None else b[0] / a[0]


def _derived(family: str, name: str, c: Constant, gpu: str, source: str) -> Constant:
    """`source`'s constant `name` of `family` carried over to `gpu` (module doc)."""
    if (family, name) in _SCALE_WITH_BANDWIDTH:
        ratio = _bandwidth_ratio(gpu, source)
        why = f"bandwidth ratio {ratio:.3g}"
    elif (family, name) in _SCALE_WITH_CLOCK and (clock := clock_ratio(gpu, source)) is not None:
        ratio, why = clock, f"SM clock ratio {source}/{gpu} {clock:.3g}"
    else:
        derived = c.derived_from(source)
        if (family, name) in _SCALE_WITH_CLOCK:
            missing = gpu if boost_clock(gpu) is None else source
            note = f"; not clock-scaled: no published boost clock for {missing}"
            derived = Constant(c.value, "derived", derived.source + note, c.date)
        return derived
    return Constant(c.value * ratio, "derived", f"{source}'s {c.tag} constant x {why} ({c.source})", c.date)


def gpu_constants(gpu: str, cal: Calibration) -> GpuConstants:
    """The constants of `gpu`: its own calibration where it has one, else derived (module doc)."""
    constants, origin = {}, {}
    for family in FAMILIES:
        source = next((g for g in chain(gpu) if family in cal.gpus.get(g, {})), None)
        if source is None:
            raise UserInputError(
                f"the calibration has no {family} constants for {gpu} or any GPU it derives from"
            )
        consts = dict(cal.gpus[source][family])
        if source != gpu:
            consts = {name: _derived(family, name, c, gpu, source) for name, c in consts.items()}
        constants[family], origin[family] = consts, source
    return GpuConstants(gpu, constants, origin)
