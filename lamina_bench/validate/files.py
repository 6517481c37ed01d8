"""The validation files: one TOML table per public source (results/validation/README.md), read and checked.

Every file needs `id` (its file name), `kind`, `split`, `gpu` (a catalog device), a non-empty `source`
and `rows`, each row with the columns of its kind. Anything else is bad input: one line naming the
file and the problem (UserInputError, exit 2 from the command line).

What a file's times cover decides the execution mode its rows are predicted in (the README's table
"What the times cover"); a file may say so itself with `timing = "kernel" | "graph" | "eager"` and
`implementation = "nccl" | "vllm"`, else TIMING_RULES below apply. How its benchmark re-reads data
decides the L2 hits of its rows (model/ops/cache.py): `reuse_copies = N` in the file, else REUSE_RULES.
"""

from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lamina_bench.catalog.devices import get_device
from lamina_bench.errors import UserInputError
from lamina_bench.model.ops.collectives import IMPLEMENTATIONS
from lamina_bench.model.ops.gemm import MODES
from lamina_bench.model.ops.hardware import LINKS

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "results" / "validation"
SPLITS = ("calibration", "validation")
KINDS = ("dense_op", "gemm", "decode_attention", "allreduce", "p2p", "e2e")
ROW_COLUMNS: dict[str, tuple[str, ...]] = {
    "dense_op": ("op", "model", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "head_dim",
                 "tp", "tokens", "time_us"),
    "gemm": ("m", "n", "k", "time_us"),
    "decode_attention": ("batch", "context", "num_heads", "num_kv_heads", "head_dim", "time_us"),
    "allreduce": ("bytes", "world_size", "link", "time_us"),
    "p2p": ("bytes", "link", "time_us"),
    "e2e": ("engine", "model", "tp", "num_gpus"),
}  # fmt: skip
# (file id pattern, kind or "*", execution mode, all-reduce implementation), first match wins.
# Vidur: Kineto kernel durations (kernel). aiconfigurator GEMM/attention: CUDA-graph replays (graph);
# its custom-allreduce files: vLLM's all-reduce captured in a graph. nccl-tests (aiconfigurator, OCI):
# mean wall time of back-to-back eager launches (eager).
TIMING_RULES: tuple[tuple[str, str, str, str], ...] = (
    ("vidur-*", "*", "kernel", "nccl"),
    ("aic-*-custom-allreduce-graph", "allreduce", "graph", "vllm"),
    ("aic-*", "gemm", "graph", "nccl"),
    ("aic-*", "decode_attention", "graph", "nccl"),
    ("aic-*-nccltests-*", "allreduce", "eager", "nccl"),
    ("oci-*-nccltests-*", "allreduce", "eager", "nccl"),
    ("*", "e2e", "graph", "vllm"),
)

# (file id pattern, kind or "*", copies of the operands the benchmark cycles through call after call),
# first match wins; 0 = no reuse (no L2 hits), 1 = the same operands every call.
# aiconfigurator collect_gemm.py runs 6 separate weight copies back to back in one CUDA graph; its
# attention collector replays one graph on the same batch and KV blocks. Vidur's profilers repeat the
# same layer (mlp.csv: the whole dense part on one set of weights, so the working set is the layer) and
# the same decode batch (attention.csv). Collectives move data between GPUs: no L2 term.
REUSE_RULES: tuple[tuple[str, str, int], ...] = (
    ("aic-*", "gemm", 6),
    ("aic-*", "decode_attention", 1),
    ("vidur-*", "dense_op", 1),
    ("vidur-*", "decode_attention", 1),
    ("*", "*", 0),
)


@dataclass(frozen=True)
class ValidationFile:
    path: Path
    id: str
    kind: str
    split: str
    gpu: str
    source: str
    dtype: str
    header: Mapping[str, object]
    rows: tuple[Mapping[str, object], ...]
    timing: str  # execution mode its times cover (gemm.MODES)
    implementation: str  # all-reduce implementation (collectives.IMPLEMENTATIONS)
    reuse: int = 0  # copies of the operands its benchmark cycles through (REUSE_RULES); 0 = none

    @property
    def family(self) -> str:
        """The source family (vidur, aic, oci, sglang, ...): the id's first word."""
        return self.id.split("-", 1)[0]


def _fail(path: Path, problem: str) -> UserInputError:
    return UserInputError(f"{path}: {problem}")


def _timing(path: Path, header: Mapping, file_id: str, kind: str) -> tuple[str, str]:
    mode, impl = header.get("timing"), header.get("implementation")
    if mode is None or impl is None:
        for pattern, rule_kind, rule_mode, rule_impl in TIMING_RULES:
            if fnmatch.fnmatch(file_id, pattern) and rule_kind in ("*", kind):
                mode, impl = mode or rule_mode, impl or rule_impl
                break
    if mode not in MODES:
        raise _fail(
            path, f"timing {mode!r} unknown (no rule for {file_id!r}); set timing = one of {', '.join(MODES)}"
        )
    if impl not in IMPLEMENTATIONS:
        raise _fail(path, f"implementation {impl!r} unknown; valid: {', '.join(IMPLEMENTATIONS)}")
    return mode, impl


def _reuse(path: Path, header: Mapping, file_id: str, kind: str) -> int:
    copies = header.get("reuse_copies")
    if copies is None:
        copies = next(
            n for pattern, k, n in REUSE_RULES if fnmatch.fnmatch(file_id, pattern) and k in ("*", kind)
        )
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 0:
        raise _fail(path, f"reuse_copies must be a whole number >= 0 (0 = no reuse), got {copies!r}")
    return copies


def _check_rows(path: Path, kind: str, rows: object) -> tuple[Mapping[str, object], ...]:
    if not isinstance(rows, list) or not rows:
        raise _fail(path, "has no [[rows]]")
    need = ROW_COLUMNS[kind]
    for i, row in enumerate(rows):
        missing = [c for c in need if c not in row]
        if missing:
            raise _fail(path, f"row {i} ({kind}) lacks {', '.join(missing)}")
        if "time_us" in need and not (isinstance(row["time_us"], int | float) and row["time_us"] > 0):
            raise _fail(path, f"row {i}: time_us must be a positive number, got {row['time_us']!r}")
        if "link" in need and row["link"] not in LINKS:
            raise _fail(path, f"row {i}: unknown link {row['link']!r}; valid: {', '.join(LINKS)}")
    return tuple(rows)


def read_file(path: str | Path, split: str | None = None) -> ValidationFile | None:
    """One checked file; None when `split` is given and the file belongs to the other split (its rows
    are then not checked or kept)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise _fail(path, f"cannot read ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise _fail(path, f"is not valid TOML ({' '.join(str(exc).split())})") from None
    for key in ("id", "kind", "split", "gpu", "source"):
        value = data.get(key)
        if not isinstance(value, str) or not value.strip():
            raise _fail(path, f"missing {key}" if value is None else f"{key} must be a non-empty string")
    if data["split"] not in SPLITS:
        raise _fail(path, f"unknown split {data['split']!r}; valid: {', '.join(SPLITS)}")
    if data["kind"] not in KINDS:
        raise _fail(path, f"unknown kind {data['kind']!r}; valid: {', '.join(KINDS)}")
    if data["id"] != path.stem:
        raise _fail(path, f"id {data['id']!r} differs from the file name {path.stem!r}")
    try:
        get_device(data["gpu"])
    except UserInputError as exc:
        raise _fail(path, f"unknown device: {exc}") from None
    if split is not None and data["split"] != split:
        return None
    mode, impl = _timing(path, data, data["id"], data["kind"])
    header = {k: v for k, v in data.items() if k != "rows"}
    return ValidationFile(
        path, data["id"], data["kind"], data["split"], data["gpu"], data["source"], str(data.get("dtype", "bf16")),
        header, _check_rows(path, data["kind"], data.get("rows")), mode, impl,
        _reuse(path, data, data["id"], data["kind"]),
    )  # fmt: skip


def load_files(folder: str | Path | None = None, split: str | None = None) -> list[ValidationFile]:
    """Every `*.toml` of `folder` (default results/validation/), checked; only `split` when given."""
    folder = Path(folder or DEFAULT_DIR)
    if not folder.is_dir():
        raise UserInputError(f"validation folder {folder} does not exist")
    files = [read_file(p, split) for p in sorted(folder.glob("*.toml"))]
    return [f for f in files if f is not None]


def select(files: Sequence[ValidationFile], kind: str | None = None, gpu: str | None = None):
    return [f for f in files if (kind is None or f.kind == kind) and (gpu is None or f.gpu == gpu)]
