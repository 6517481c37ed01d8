"""Measured points: run the reference implementation here on a fixed batch and turn its timings into rows.

A measured point serves `batch_size` requests of `context_len` random prompt tokens each, all arriving at
once, and decodes `new_tokens` tokens per request. The TBT figures and throughput exclude the prefill
(decode only, as in the paper): every decode iteration is one TBT sample. The per-request latencies
(ttft, tpot, itl, e2el: mean, median, p90, p99; reference_impl/latency.py) cover the whole request, its
prefill included, as vLLM's serving benchmark counts them. The same configuration is then predicted by
the performance model from the local profile (decode only), so the model's error sits next to the
measurement. With `prefill_workers` > 0 the Lamina runtime prefills on its own processes.

On CPU a "device" is one core: every process runs one torch thread (the Lamina launcher gives each of
its processes cores / processes = 1 thread on a 2-core machine; the homogeneous run is pinned to one
thread to match), and the profile is taken with one thread too (ProfileSettings.cpu_threads).
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lamina_bench.catalog.benchmodels import checkpoint_path, local_model_spec
from lamina_bench.measure.config import MeasuredConfig
from lamina_bench.model.profiles import Profile
from lamina_bench.model.reference import ReferencePrediction, ReferenceRun, predict_reference_run
from reference_impl.config import GenerateConfig
from reference_impl.engine import Request
from reference_impl.homogeneous import generate
from reference_impl.lamina import LaminaConfig, generate_lamina
from reference_impl.latency import latency_metrics, request_latencies

MEASURED_SYSTEMS = ("homogeneous", "lamina")


@dataclass(frozen=True)
class DecodeTimings:
    """Decode iterations of one measured run: batch and wall seconds of each (measured)."""

    batches: tuple[int, ...]
    times_s: tuple[float, ...]
    breakdown_ms: Mapping[str, Any] | None = None  # per-pool dense/attention/network/idle per iteration
    net_bytes_per_token: float | None = None
    latencies: Mapping[str, float | None] | None = None  # per-request figures (latency.latency_metrics)

    def metrics(self) -> dict[str, float]:
        """Registered metrics of the run (results/metrics.py); the ones not measured are left out."""
        if not self.times_s:
            return {}
        tbt_ms = sorted(t * 1e3 for t in self.times_s)
        q = statistics.quantiles(tbt_ms, n=100, method="inclusive") if len(tbt_ms) > 1 else tbt_ms * 99
        values = {
            "throughput_tok_per_s": sum(self.batches) / sum(self.times_s),
            "generated_tokens": float(sum(self.batches)),
            "tbt_p50_ms": statistics.median(tbt_ms),
            "tbt_p90_ms": q[89],
            "tbt_p99_ms": q[98],
            "tbt_mean_ms": statistics.fmean(tbt_ms),
            "mean_batch_size": statistics.fmean(self.batches),
            "max_batch_size": float(max(self.batches)),
            "net_bytes_per_token": self.net_bytes_per_token,
            **self._flat_breakdown(),
            **(self.latencies or {}),
        }
        return {k: v for k, v in values.items() if v is not None}

    def _flat_breakdown(self) -> dict[str, float | None]:
        """dense/attention/network/idle ms per decode step: each pool's own work, the compute pool's waits."""
        pools = self.breakdown_ms or {}
        compute, attention = pools.get("compute", {}), pools.get("attention", {})
        return {
            "dense_ms": compute.get("dense_ms"),
            "attention_ms": attention.get("attention_ms"),
            "network_ms": compute.get("network_ms"),
            "idle_ms": compute.get("idle_ms"),
        }


@contextlib.contextmanager
def one_cpu_thread():
    """Run the block with one torch intra-op thread (a CPU "device" is one core), then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fixed_batch_requests(batch: int, context_len: int, new_tokens: int, vocab_size: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [
        Request(i, tuple(torch.randint(0, vocab_size, (context_len,), generator=gen).tolist()), new_tokens)
        for i in range(batch)
    ]


def _vocab_size(folder) -> int:
    return local_model_spec(folder).vocab_size


def run_measured(config: MeasuredConfig, seed: int = 0) -> DecodeTimings:
    """Run one measured configuration (see module doc) and return its decode timings."""
    folder = checkpoint_path(config.model)
    requests = fixed_batch_requests(
        config.batch_size, config.context_len, config.new_tokens, _vocab_size(folder), seed
    )
    if config.lamina:
        return _run_lamina(config, folder, requests)
    return _run_homogeneous(config, folder, requests)


def _run_homogeneous(config: MeasuredConfig, folder, requests) -> DecodeTimings:
    cfg = GenerateConfig(
        model_dir=str(folder), tp=config.tp, device=config.device, dtype=config.dtype, ignore_eos=True
    )
    with one_cpu_thread():  # tensor-parallel ranks are processes that set their own thread count
        run = generate(cfg, requests)
    decode = [it for it in run.iterations if it.decode_seqs]
    return DecodeTimings(
        tuple(it.decode_seqs for it in decode),
        tuple(it.decode_s for it in decode),
        latencies=latency_metrics(request_latencies(run, requests)),
    )


def _run_lamina(config: MeasuredConfig, folder, requests) -> DecodeTimings:
    cfg = LaminaConfig(
        model_dir=str(folder),
        compute_workers=config.compute_workers,
        attention_workers=config.attention_workers,
        pipeline_batches=config.pipeline_batches,
        prefill_workers=config.prefill_workers,
        device=config.device,
        dtype=config.dtype,
        ignore_eos=True,
    )
    run = generate_lamina(cfg, requests)
    decode = [it for it in run.engine.iterations if it.decode_seqs]
    layers = run.model.num_layers
    payload = run.link_payload_bytes_per_token_per_layer
    return DecodeTimings(
        tuple(it.decode_seqs for it in decode),
        tuple(it.decode_s for it in decode),
        breakdown_ms=_pools_ms(run),
        net_bytes_per_token=None if payload is None else payload * layers,
        latencies=latency_metrics(request_latencies(run.engine, requests)),
    )


def _pools_ms(run) -> dict[str, dict[str, float]]:
    """Mean ms per decode step of each pool's workers in dense/attention/network/idle (measured)."""
    pools: dict[str, dict[str, float]] = {}
    for role in ("compute", "attention"):
        steps = [s for w in run.workers if w.role == role for s in w.steps if s.kind == "decode"]
        if steps:
            parts = ("dense", "attention", "network", "idle", "other")
            pools[role] = {
                f"{c}_ms": 1e3 * sum(getattr(s, f"{c}_s") for s in steps) / len(steps) for c in parts
            }
    return pools


def predict_measured(config: MeasuredConfig, profile: Profile) -> ReferencePrediction:
    """The performance model's prediction of a measured configuration from `profile` (modeled)."""
    folder = checkpoint_path(config.model)
    spec = local_model_spec(folder)
    run = ReferenceRun(
        model=spec,
        system=config.system,
        batch_size=config.batch_size,
        context_len=config.context_len,
        decode_steps=config.new_tokens - 1,  # the first new token comes from the prefill
        dtype=config.dtype,
        compute_workers=config.compute_workers if config.lamina else config.tp,
        attention_workers=config.attention_workers if config.lamina else 1,
        pipeline_batches=config.pipeline_batches,
    )
    return predict_reference_run(profile, run)
