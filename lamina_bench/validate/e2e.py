"""End-to-end rows the simulator can predict, and why the others are left out.

Predicted: decode TPOT of a homogeneous TP group at a fixed concurrency C with fixed input and output
lengths (rows with `concurrency`, `input_len`, `output_len`, `tpot_ms`). The simulator replays C
requests of that shape, all queued at t = 0 (saturate mode, batch capped at C), on the calibrated operator
model in CUDA-graph mode with vLLM's all-reduce; predicted TPOT = the token-weighted mean iteration time
(`tbt_mean_ms`). The simulator is decode-only, so prefill interference between decode steps (other
requests' prompts joining the batch) is not in the prediction: TPOT at high concurrency with short
outputs is under-predicted by the share of time the engine spends on prefills.

Left out, with the reason printed: rows without fixed lengths (ShareGPT), rows driven by an arrival
rate (they need the length distribution and prefill), throughput-only rows, TTFT.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from lamina_bench.catalog.devices import get_device, parse_mix
from lamina_bench.catalog.models import ModelSpec, get_model
from lamina_bench.catalog.workloads import Trace
from lamina_bench.model.iteration import IterationModel
from lamina_bench.model.operators import DeviceModel
from lamina_bench.model.ops.calibration import Calibration
from lamina_bench.model.ops.device import gpu_model
from lamina_bench.model.simulator import simulate
from lamina_bench.model.system import SystemConfig
from lamina_bench.validate.files import ValidationFile
from lamina_bench.validate.predict import Judged

# Models named by the e2e files that the model catalog lacks, copied from their HF config.json.
EXTRA_MODELS = {
    "Qwen/Qwen3-32B": ModelSpec(
        "qwen3-32b", "llama", num_layers=64, hidden_size=5120, num_heads=64, num_kv_heads=8, head_dim=128,
        intermediate_size=25600, vocab_size=151936, max_position=40960, mlp="swiglu", tie_embeddings=False,
        qkv_bias=False, source="Qwen/Qwen3-32B config.json (q/k RMSNorm not modelled)",
    ),
}  # fmt: skip
CATALOG_NAMES = {
    "meta-llama/Llama-3.1-8B-Instruct": "llama3.1-8b",
    "meta-llama/Llama-3.1-70B-Instruct": "llama3.1-70b",
}


def model_spec(name: str) -> ModelSpec | None:
    if name in EXTRA_MODELS:
        return EXTRA_MODELS[name]
    return get_model(CATALOG_NAMES[name]) if name in CATALOG_NAMES else None


def left_out_reason(row: Mapping) -> str | None:
    """Why this e2e row cannot be predicted by the decode-only simulator, or None when it can."""
    if row.get("dataset") == "sharegpt":
        return "ShareGPT lengths (a length distribution the simulator is not given)"
    if "request_rate" in row:
        return f"arrivals at {row['request_rate']} req/s with drawn lengths (needs prefill and the length distribution)"
    missing = [k for k in ("concurrency", "input_len", "output_len", "tpot_ms") if k not in row]
    if missing:
        return f"no {', '.join(missing)}"
    if model_spec(str(row["model"])) is None:
        return f"model {row['model']} not in the catalog"
    return None


def predict_row(f: ValidationFile, row: Mapping, cal: Calibration) -> Judged:
    spec = model_spec(str(row["model"]))
    tp, conc = int(row["tp"]), int(row["concurrency"])
    device = get_device(f.gpu)
    ops = gpu_model(device, cal, mode="graph", allreduce_impl="vllm")
    dm = DeviceModel(device, None, ops)
    config = SystemConfig("homogeneous", spec, parse_mix(f"{tp}x{f.gpu}"), dtype=f.dtype, max_batch_size=conc)
    model = IterationModel(spec, f.dtype, "homogeneous", tp, tp, 1, dm, dm)
    n = conc
    trace = Trace(
        f"{f.id}-shape", np.zeros(n), np.full(n, int(row["input_len"]), dtype=np.int64),
        np.full(n, int(row["output_len"]), dtype=np.int64), "synthetic: the row's concurrency and lengths",
    )  # fmt: skip
    result = simulate(config, trace, "saturate", model=model)
    cond = {"engine": row["engine"], "model": row["model"], "tp": tp, "concurrency": conc,
            "input_len": row["input_len"], "output_len": row["output_len"]}  # fmt: skip
    return Judged(
        "e2e", f.split, f.gpu, f.id, f.source, cond, float(row["tpot_ms"]), float(result.tbt_mean_ms),
        metric="tbt_mean_ms", model_source="derived" if ops.derived else "modeled", model_name=ops.name,
        settings={"statistic": "TPOT mean (the source's tpot_ms)", "timing": "graph"},
    )  # fmt: skip


def predict_e2e(
    files: Sequence[ValidationFile], cal: Calibration
) -> tuple[list[Judged], list[tuple[str, int, str]]]:
    """(judgements, left out as (file id, row index, reason))."""
    judged, left_out = [], []
    for f in files:
        if f.kind != "e2e":
            continue
        for i, row in enumerate(f.rows):
            reason = left_out_reason(row)
            if reason is None:
                judged.append(predict_row(f, row, cal))
            else:
                left_out.append((f.id, i, reason))
    return judged, left_out
