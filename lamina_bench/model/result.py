"""The result of one simulation (`model/simulator.py`): its metrics, and its view as a stored row."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from lamina_bench.model.cost import usd_per_mtok
from lamina_bench.model.summary import latency_fields


@dataclass(frozen=True)
class SimulationResult:
    """One simulated run; `to_dict` holds at least the `simulate --json` keys of DESIGN.md."""

    system: str
    model: str
    trace: str
    compute: str
    attention: str | None
    dtype: str
    pipeline_batches: int
    arrival: str
    max_batch_limit: int | None
    requests: int  # requests served
    rejected_requests: int  # prompt + output larger than the whole KV capacity
    generated_tokens: int
    iterations: int
    makespan_s: float
    throughput_tok_per_s: float  # all tokens / makespan (includes the drain at the end of the trace)
    mean_batch_size: float | None  # tokens / iterations
    # The steady phase of saturate mode (iterations that start while requests still wait for their first
    # admission: the system full, without the drain, whose length a single long request sets) and of
    # concurrency mode (iterations before the last request is sent: every client busy). None otherwise.
    saturated_throughput_tok_per_s: float | None
    saturated_mean_batch_size: float | None
    max_batch_size: int
    tbt_mean_ms: float | None  # token-weighted: every token's TBT is its iteration's duration
    tbt_p50_ms: float | None
    tbt_p90_ms: float | None
    tbt_p99_ms: float | None
    kv_capacity_tokens: int
    kv_peak_tokens: int
    cost_usd_per_hour: float | None
    tokens_per_usd: float | None
    usd_per_mtok: float | None
    saturated_tokens_per_usd: float | None
    net_bytes_per_token: float  # compute <-> attention link, all layers (homogeneous: no such link, 0)
    net_peak_gbps: float  # highest per-iteration link rate needed (bytes / iteration time), derived
    net_mean_gbps: float
    compute_busy_fraction: float | None
    attention_busy_fraction: float | None  # None for homogeneous (attention runs on the compute devices)
    # Mean over iterations of one whole iteration and its parts, ms (the report's per-pool time bars):
    # dense/attention/network of one micro-batch (Lamina) or of the batch (homogeneous), and the time
    # each compute / attention device is busy per iteration (all micro-batches).
    iteration_mean_ms: float | None
    dense_mean_ms: float | None
    attention_mean_ms: float | None
    network_mean_ms: float | None
    compute_busy_mean_ms: float | None
    attention_busy_mean_ms: float | None
    compute_flops_utilization: float | None  # dense model flops / (time * peak), derived
    kv_bandwidth_utilization: float | None  # KV bytes read / (time * peak bandwidth) of the KV pool, derived
    source: str
    profile: str
    price_set: str | None = None  # the price set behind every cost figure (catalog/prices.py)
    scheduler: str = "reserve-all"  # model/scheduler.py (label with the vLLM knobs)
    concurrency: int | None = None  # clients of the closed loop (arrival "concurrency")
    throughput_basis: str = "whole trace"  # what the headline throughput covers (model/summary.py)
    preemptions: int = 0  # preemptions by recompute (vllm)
    prefill_tokens: int = 0  # prompt and recompute tokens computed (vllm; reserve-all excludes prefill)
    # per-request latencies over the served requests, vLLM's names, ms (model/summary.py); reserve-all:
    # decode only, so TTFT and E2EL are None and TPOT, ITL and the queueing delay exclude prefill
    mean_ttft_ms: float | None = None
    median_ttft_ms: float | None = None
    p90_ttft_ms: float | None = None
    p99_ttft_ms: float | None = None
    mean_tpot_ms: float | None = None
    median_tpot_ms: float | None = None
    p90_tpot_ms: float | None = None
    p99_tpot_ms: float | None = None
    mean_itl_ms: float | None = None
    median_itl_ms: float | None = None
    p90_itl_ms: float | None = None
    p99_itl_ms: float | None = None
    mean_e2el_ms: float | None = None
    median_e2el_ms: float | None = None
    p90_e2el_ms: float | None = None
    p99_e2el_ms: float | None = None
    mean_queueing_delay_ms: float | None = None
    median_queueing_delay_ms: float | None = None
    p99_queueing_delay_ms: float | None = None
    # whole-run rates (vLLM's benchmark duration = makespan), model/summary.py
    request_throughput: float | None = None  # served requests / s
    output_throughput: float | None = None  # generated tokens / s
    total_token_throughput: float | None = None  # (prompt + generated tokens) / s
    request_goodput: float | None = None  # requests / s meeting the SLOs below (None without an SLO)
    ttft_slo_ms: float | None = None
    tpot_slo_ms: float | None = None
    # prefill pool (model/prefill_pool.py): its mix (part of cost_usd_per_hour), busy share, KV it sent
    prefill_pool: str | None = None
    prefill_pool_busy_fraction: float | None = None
    prefill_kv_bytes: float = 0.0  # KV moved from where prompts were prefilled to the KV side, bytes

    def to_dict(self) -> dict:
        """Every field, with the headline figures (throughput, mean batch, tokens per USD, USD per Mtok) on
        the basis the stored rows use (`throughput_basis`, see `row_fields`) and the whole-trace ones
        beside them as `whole_trace_<name>`: `simulate --json`, its table and the report agree."""
        out = dataclasses.asdict(self)
        fields = self.row_fields()
        for name in _SATURATED_METRICS:
            out[f"whole_trace_{name}"] = out[name]
            out[name] = fields["metrics"].get(name)
        out["throughput_basis"] = fields["throughput_basis"]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def row_fields(self) -> dict[str, Any]:
        """This result as PointRow fields (results/row.py): registered metrics, per-pool times and notes.

        Saturate and concurrency modes report their steady phase (`throughput_basis`, model/summary.py),
        not the drain after it, and keep the whole-trace figures beside it.
        """
        serving = _SERVING_METRICS if self.scheduler.startswith("vllm") else ()
        values = {k: getattr(self, k) for k in (*_ROW_METRICS, *serving)}
        notes: dict[str, Any] = {"throughput_basis": self.throughput_basis}
        if self.saturated_throughput_tok_per_s is not None:
            whole = {k: values[k] for k in _SATURATED_METRICS}
            notes.update(whole_trace=_present(whole))
            values.update(
                throughput_tok_per_s=self.saturated_throughput_tok_per_s,
                mean_batch_size=self.saturated_mean_batch_size,
                tokens_per_usd=self.saturated_tokens_per_usd,
                usd_per_mtok=usd_per_mtok(self.saturated_throughput_tok_per_s, self.cost_usd_per_hour),
            )
        pools = self.pools_ms()
        compute, attention = pools["compute"], pools.get("attention", {})
        pooled = self.system != "homogeneous"  # Lamina, AFD: a link between two pools
        values.update(
            dense_ms=compute["dense_ms"],
            attention_ms=attention.get("attention_ms", compute.get("attention_ms")),
            network_ms=self.network_mean_ms * self.pipeline_batches if pooled else None,
            idle_ms=compute["idle_ms"],
        )
        return {
            "source": self.source,
            "profile": self.profile,
            "rejected_requests": self.rejected_requests,
            "metrics": _present(values),
            "pools": pools,
            **notes,
        }

    def pools_ms(self) -> dict[str, dict[str, float]]:
        """Per-pool time per decode iteration (ms, mean over the replay) for the report's stacked bars."""
        it = self.iteration_mean_ms
        if self.system == "homogeneous":  # dense and attention one after the other on the same devices
            idle = it - self.dense_mean_ms - self.attention_mean_ms
            return {
                "compute": {
                    "dense_ms": self.dense_mean_ms,
                    "attention_ms": self.attention_mean_ms,
                    "idle_ms": idle,
                }
            }
        # the link overlaps with both pools' work (pipelining), so it is not stacked; it is network_ms
        return {
            "compute": {"dense_ms": self.compute_busy_mean_ms, "idle_ms": it - self.compute_busy_mean_ms},
            "attention": {
                "attention_ms": self.attention_busy_mean_ms,
                "idle_ms": it - self.attention_busy_mean_ms,
            },
        }


# Registered metrics a simulation fills in directly, and those saturate mode reports for its saturated phase.
_ROW_METRICS = (
    "throughput_tok_per_s",
    "generated_tokens",
    "tbt_p50_ms",
    "tbt_p90_ms",
    "tbt_p99_ms",
    "tbt_mean_ms",
    "mean_batch_size",
    "max_batch_size",
    "cost_usd_per_hour",
    "tokens_per_usd",
    "usd_per_mtok",
    "net_bytes_per_token",
    "net_peak_gbps",
)
# Per-request serving metrics (model/summary.py), stored in rows of the vllm scheduler only: reserve-all is
# decode only (no TTFT; its TPOT and queueing delay exclude prefill), so its rows stay as they were.
_SERVING_METRICS = (
    *latency_fields(),
    "request_throughput",
    "output_throughput",
    "total_token_throughput",
    "request_goodput",
)
_SATURATED_METRICS = ("throughput_tok_per_s", "mean_batch_size", "tokens_per_usd", "usd_per_mtok")


def _present(values: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in values.items() if v is not None}


def ratio(num: float, den: float | None) -> float | None:
    return None if den is None or den <= 0 else num / den
