"""Predict the rows of the validation files with the operator model: one `Judged` item per comparison.

* dense_op files are judged per LAYER: the measured ops of one (model, tp, tokens) summed into one
  layer time against the model's layer (kernel-only, as Vidur times it; what the simulator's
  dense_layer composes); each op is also judged alone (kind "dense_op", a secondary table).
* gemm, decode_attention, allreduce, p2p rows are judged one by one, in the execution mode and with the
  all-reduce implementation their file's timing says (files.TIMING_RULES), with the L2 reuse of their
  benchmark (files.REUSE_RULES).
* e2e rows: e2e.py.

The model of a GPU comes from the committed calibration (own constants, or derived from a parent GPU).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from lamina_bench.catalog.devices import get_device
from lamina_bench.model.ops.calibration import Calibration
from lamina_bench.model.ops.device import GpuModel, gpu_model
from lamina_bench.model.ops.layer import LAYER_OPS
from lamina_bench.validate.files import ValidationFile
from lamina_bench.validate.fit import shape_of

OPERATOR_KINDS = ("dense_layer", "gemm", "decode_attention", "allreduce", "p2p")
SECONDARY_KINDS = ("dense_op",)


@dataclass(frozen=True)
class Judged:
    """One measured value and the model's prediction of it."""

    kind: str  # dense_layer | dense_op | gemm | decode_attention | allreduce | p2p | e2e
    split: str
    gpu: str
    file: str
    source: str  # the file's source (provenance line)
    conditions: Mapping[str, object]  # what the row measures (shape, size, ...), for the worst-row line
    measured: float  # metric value (op_time_us, or tbt_mean_ms for e2e)
    predicted: float
    metric: str = "op_time_us"
    model_source: str = "modeled"  # modeled | derived (constants of another GPU)
    model_name: str = ""
    settings: Mapping[str, object] = field(default_factory=dict)  # extra provenance of the measurement

    @property
    def error(self) -> float:
        return self.predicted / self.measured - 1.0


def models_for(files: Sequence[ValidationFile], cal: Calibration) -> dict[str, GpuModel]:
    return {gpu: gpu_model(get_device(gpu), cal) for gpu in sorted({f.gpu for f in files})}


def _judged(f: ValidationFile, model: GpuModel, kind: str, conditions, measured_us, predicted_s, **settings):
    return Judged(
        kind, f.split, f.gpu, f.id, f.source, conditions, float(measured_us), float(predicted_s) * 1e6,
        model_source="derived" if model.derived else "modeled", model_name=model.name,
        settings={"timing": f.timing, **settings},
    )  # fmt: skip


def predict_dense(f: ValidationFile, model: GpuModel) -> list[Judged]:
    """Per-op and per-layer judgements of one dense_op file (kernel times, as the file measures)."""
    model = model.with_mode(f.timing)
    groups: dict[tuple, dict[str, Mapping]] = defaultdict(dict)
    for row in f.rows:
        groups[(row["model"], int(row["tp"]), int(row["tokens"]))][row["op"]] = row
    out = []
    for (name, tp, tokens), ops in sorted(groups.items()):
        first = next(iter(ops.values()))
        predicted = model.layer_ops(shape_of(first), tokens, tp, f.dtype, f.reuse)
        cond = {"model": name, "tp": tp, "tokens": tokens}
        for op, row in ops.items():
            out.append(_judged(f, model, "dense_op", {**cond, "op": op}, row["time_us"], predicted[op]))
        if set(ops) == set(LAYER_OPS):  # judge a layer only when every op was measured
            measured = sum(row["time_us"] for row in ops.values())
            layer = model.dense_layer(shape_of(first), tokens, tp, f.dtype, f.reuse)
            out.append(_judged(f, model, "dense_layer", cond, measured, layer))
    return out


def predict_gemm(f: ValidationFile, model: GpuModel) -> list[Judged]:
    model = model.with_mode(f.timing)
    rows = f.rows
    m, n, k = (np.array([r[c] for r in rows], dtype=float) for c in ("m", "n", "k"))
    pred = model.gemm(m, n, k, f.dtype, f.reuse)
    return [
        _judged(f, model, "gemm", {"m": r["m"], "n": r["n"], "k": r["k"]}, r["time_us"], p)
        for r, p in zip(rows, pred, strict=True)
    ]


def predict_attention(f: ValidationFile, model: GpuModel) -> list[Judged]:
    model = model.with_mode(f.timing)
    rows = f.rows
    cols = {c: np.array([r[c] for r in rows], dtype=float)
            for c in ("batch", "context", "num_heads", "num_kv_heads", "head_dim")}  # fmt: skip
    pred = model.attention(cols["batch"], cols["context"], cols["num_heads"], cols["num_kv_heads"],
                           cols["head_dim"], f.dtype, f.reuse)  # fmt: skip
    keys = ("batch", "context", "num_heads", "num_kv_heads", "head_dim")
    return [
        _judged(
            f, model, "decode_attention", {c: r[c] for c in keys}, r["time_us"], p, kernel=r.get("kernel", "")
        )
        for r, p in zip(rows, pred, strict=True)
    ]


def predict_allreduce(f: ValidationFile, model: GpuModel) -> list[Judged]:
    model = model.with_mode(f.timing)
    out = []
    for r in f.rows:
        p = model.allreduce(float(r["bytes"]), int(r["world_size"]), r["link"], f.implementation)
        cond = {"bytes": r["bytes"], "world_size": r["world_size"], "link": r["link"]}
        out.append(_judged(f, model, "allreduce", cond, r["time_us"], p, implementation=f.implementation))
    return out


def predict_p2p(f: ValidationFile, model: GpuModel) -> list[Judged]:
    return [
        _judged(
            f,
            model,
            "p2p",
            {"bytes": r["bytes"], "link": r["link"]},
            r["time_us"],
            model.p2p(float(r["bytes"]), r["link"]),
        )  # fmt: skip
        for r in f.rows
    ]


PREDICTORS = {
    "dense_op": predict_dense,
    "gemm": predict_gemm,
    "decode_attention": predict_attention,
    "allreduce": predict_allreduce,
    "p2p": predict_p2p,
}


def predict_operators(files: Iterable[ValidationFile], cal: Calibration) -> list[Judged]:
    """Every operator-level judgement of `files` (e2e files are e2e.py's)."""
    files = [f for f in files if f.kind in PREDICTORS]
    models = models_for(files, cal)
    return [j for f in files for j in PREDICTORS[f.kind](f, models[f.gpu])]
