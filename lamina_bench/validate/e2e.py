"""End-to-end rows the simulator predicts, and why the others are left out.

Every predicted row is replayed through the simulator with the `vllm` scheduler (model/scheduler.py:
paged KV, prefill, preemption, CPU overhead) on a homogeneous TP group of the calibrated operator model in
CUDA-graph mode with vLLM's all-reduce, the engine's scheduling mode and budget taken from its source:

  vLLM (V1)  chunked prefill mixed with the decodes, max_num_batched_tokens 8192 and max_num_seqs 1024 on
             GPUs with >= 70 GiB that are not A100 (vllm/engine/arg_utils.py get_batch_defaults, 2025);
  SGLang     prefill batches run separately from the decode batches (its default scheduler without
             --enable-mixed-chunk), capped by chunked_prefill_size 8192 on GPUs under 160 GB
             (sgl-project/sglang python/sglang/srt/server_args.py, 2025); the rest as vLLM's.

Rows and what is compared:
  concurrency rows (fixed input / output lengths, `tpot_ms`): a closed loop of `concurrency` clients
      (simulate --arrival concurrency). The request count is not in the row: aiconfigurator's benchmark
      sends MULTI_ROUND x concurrency requests, MULTI_ROUND = 20 by default (ai-dynamo/aiconfigurator
      src/aiconfigurator/generator/sflow.py and backend_templates/benchmark/bench_run.sh.j2), so 20 x
      concurrency requests from a cold start; predicted TPOT = mean over requests of (last token - first
      token) / (output - 1), as the benchmark tools compute it (metric `tbt_mean_ms`, statistic TPOT mean).
  random-dataset rows at a request rate (`output_tok_per_s`): the requests sglang.bench_serving draws,
      rebuilt exactly: numpy's legacy generator seeded with its --seed default 1 draws the input lengths
      randint(max(int(L_in r), 1), L_in + 1), then the output lengths randint(int(L_out r), L_out + 1), with
      --random-range-ratio r = 0.0 by default, then one exponential(1 / rate) gap after each request
      (python/sglang/bench_serving.py sample_random_requests, get_request; @0033168f). The ratio of the two
      printed throughputs (input / output) equals the ratio of the drawn totals to 6 digits in every row, a
      check that these are the requests that ran. Predicted output throughput = output tokens / time from
      the first arrival to the last token, as bench_serving reports it (metric `throughput_tok_per_s`).

Left out, with the reason printed: ShareGPT rows (bench_serving samples ShareGPT conversations tokenized
with the model's tokenizer; no per-request length distribution of that sample is published, only totals,
and none is invented here), rows of models the catalog lacks, rows without the columns above.
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
from lamina_bench.model.scheduler import Scheduler
from lamina_bench.model.simulator import SimulationResult, simulate
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
# Engine scheduling (module doc): vLLM V1 on >= 70 GiB GPUs other than A100; SGLang on < 160 GB GPUs.
VLLM_ENGINE = Scheduler("vllm", max_num_seqs=1024, max_num_batched_tokens=8192, prefill="chunked")
SGLANG_ENGINE = Scheduler("vllm", max_num_seqs=1024, max_num_batched_tokens=8192, prefill="separate")
CLOSED_LOOP_ROUNDS = 20  # aiconfigurator's MULTI_ROUND default (module doc)
BENCH_SERVING_SEED = 1  # sglang.bench_serving --seed default
BENCH_SERVING_RANGE_RATIO = 0.0  # sglang.bench_serving --random-range-ratio default


def model_spec(name: str) -> ModelSpec | None:
    if name in EXTRA_MODELS:
        return EXTRA_MODELS[name]
    return get_model(CATALOG_NAMES[name]) if name in CATALOG_NAMES else None


def left_out_reason(row: Mapping) -> str | None:
    """Why this e2e row cannot be predicted, or None when it can."""
    if row.get("dataset") == "sharegpt":
        return "ShareGPT lengths (no per-request length distribution of bench_serving's sample is published)"
    if model_spec(str(row["model"])) is None:
        return f"model {row['model']} not in the catalog"
    if "request_rate" in row:
        wanted = ("dataset", "num_prompts", "input_len", "output_len", "output_tok_per_s")
        missing = [k for k in wanted if k not in row]
        if missing or row["dataset"] != "random":
            return f"arrivals at a rate without {', '.join(missing) or 'the random dataset'}"
        return None
    missing = [k for k in ("concurrency", "input_len", "output_len", "tpot_ms") if k not in row]
    return f"no {', '.join(missing)}" if missing else None


def engine_scheduler(engine: str) -> Scheduler:
    return SGLANG_ENGINE if engine.lower().startswith("sglang") else VLLM_ENGINE


def bench_serving_random(n: int, input_len: int, output_len: int, rate: float) -> Trace:
    """The requests and arrival times sglang.bench_serving draws for the random dataset (module doc).
    A drawn output of 0 tokens is taken as 1 (the simulator generates at least one)."""
    rng = np.random.RandomState(BENCH_SERVING_SEED)  # numpy's legacy global generator, as np.random.seed
    r = BENCH_SERVING_RANGE_RATIO
    prompt = rng.randint(max(int(input_len * r), 1), input_len + 1, size=n).astype(np.int64)
    output = rng.randint(int(output_len * r), output_len + 1, size=n).astype(np.int64)
    gaps = np.array([rng.exponential(1.0 / rate) for _ in range(n)])  # one draw after each request
    arrival = np.concatenate([[0.0], np.cumsum(gaps[:-1])])
    name = f"bench_serving-random-{input_len}x{output_len}"
    return Trace(name, arrival, prompt, np.maximum(output, 1), "sglang.bench_serving random dataset, seed 1")


def _simulate(f: ValidationFile, row: Mapping, cal: Calibration, trace: Trace, **kwargs) -> SimulationResult:
    spec = model_spec(str(row["model"]))
    tp = int(row["tp"])
    device = get_device(f.gpu)
    ops = gpu_model(device, cal, mode="graph", allreduce_impl="vllm")
    dm = DeviceModel(device, None, ops)
    scheduler = engine_scheduler(str(row["engine"]))
    config = SystemConfig("homogeneous", spec, parse_mix(f"{tp}x{f.gpu}"), dtype=f.dtype, scheduler=scheduler)
    model = IterationModel(spec, f.dtype, "homogeneous", tp, tp, 1, dm, dm)
    return simulate(config, trace, model=model, **kwargs)


def _judged(f: ValidationFile, row: Mapping, cal: Calibration, cond, measured, predicted, metric, statistic):
    ops = gpu_model(get_device(f.gpu), cal)
    return Judged(
        "e2e", f.split, f.gpu, f.id, f.source, cond, float(measured), float(predicted), metric=metric,
        model_source="derived" if ops.derived else "modeled", model_name=ops.name,
        settings={"statistic": statistic, "timing": "graph", "scheduler": engine_scheduler(str(row["engine"])).label()},
    )  # fmt: skip


def predict_row(f: ValidationFile, row: Mapping, cal: Calibration) -> Judged:
    cond = {"engine": row["engine"], "model": row["model"], "tp": int(row["tp"])}
    lengths = {"input_len": int(row["input_len"]), "output_len": int(row["output_len"])}
    if "request_rate" in row:
        n, rate = int(row["num_prompts"]), float(row["request_rate"])
        trace = bench_serving_random(n, lengths["input_len"], lengths["output_len"], rate)
        result = _simulate(f, row, cal, trace, arrival="trace")
        cond |= {"request_rate": rate, "num_prompts": n, **lengths}
        return _judged(f, row, cal, cond, row["output_tok_per_s"], result.throughput_tok_per_s,
                       "throughput_tok_per_s", "output token throughput (bench_serving)")  # fmt: skip
    conc = int(row["concurrency"])
    n = CLOSED_LOOP_ROUNDS * conc
    trace = Trace(
        f"{f.id}-shape", np.zeros(n), np.full(n, lengths["input_len"], dtype=np.int64),
        np.full(n, lengths["output_len"], dtype=np.int64), "synthetic: the row's lengths",
    )  # fmt: skip
    result = _simulate(f, row, cal, trace, arrival="concurrency", concurrency=conc)
    cond |= {"concurrency": conc, **lengths}
    return _judged(f, row, cal, cond, row["tpot_ms"], result.mean_tpot_ms, "tbt_mean_ms",
                   "TPOT mean (the source's tpot_ms)")  # fmt: skip


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
