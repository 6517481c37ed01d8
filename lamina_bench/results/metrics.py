"""The metric registry: every number a point row can carry, with its unit, good direction and meaning.

One entry here is all a new metric needs: rows validate their metric names against this registry (a typo
fails at once, never shows up as "n/a"), the store writes it, `compare` judges it in its direction, the
report and the history view list it with its unit. Names follow vLLM's benchmark where one exists and
carry their unit (`_ms`, `_tok_per_s`, `_usd_...`).

Per-decode-iteration times (`dense_ms`, `attention_ms`, `network_ms`, `idle_ms`) are means over the run's
decode iterations; a row's per-pool split of them is `PointRow.pools`.
"""

from __future__ import annotations

from dataclasses import dataclass

UP, DOWN, NEUTRAL = "up", "down", "none"
DIRECTIONS = (UP, DOWN, NEUTRAL)
SOURCES = ("measured", "modeled", "derived")  # where a number comes from (DESIGN: honesty rules)


@dataclass(frozen=True)
class Metric:
    """One metric: `better` is its good direction (NEUTRAL: a change is only "changed")."""

    name: str
    unit: str
    better: str
    has_ci: bool  # rows with repeats carry a 95% CI of the median for it
    meaning: str  # one line
    label: str  # short name for tables and axes, unit included

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name != self.name.lower():
            raise ValueError(f"metric name {self.name!r} must be a lower-case identifier")
        if self.better not in DIRECTIONS:
            raise ValueError(f"metric {self.name}: better must be one of {', '.join(DIRECTIONS)}")


_TABLE = (
    # name, unit, better, has_ci, meaning, label
    ("throughput_tok_per_s", "tok/s", UP, True,
     "generated tokens per second; a saturate-mode replay counts its saturated phase (throughput_basis)",
     "throughput (tok/s)"),
    ("generated_tokens", "tokens", NEUTRAL, False, "tokens generated (set by the workload)", "generated tokens"),
    ("tbt_p50_ms", "ms", DOWN, True, "median time between tokens", "TBT p50 (ms)"),
    ("tbt_p90_ms", "ms", DOWN, True, "90th percentile time between tokens", "TBT p90 (ms)"),
    ("tbt_p99_ms", "ms", DOWN, True, "99th percentile time between tokens", "TBT p99 (ms)"),
    ("tbt_mean_ms", "ms", DOWN, True, "mean time between tokens (token-weighted)", "TBT mean (ms)"),
    ("mean_batch_size", "requests", UP, False,
     "running requests per decode iteration, mean (Lamina's point: larger batches)", "mean batch"),
    ("max_batch_size", "requests", UP, False, "running requests per decode iteration, max", "max batch"),
    ("cost_usd_per_hour", "USD/h", DOWN, False, "rental price of every device of the mix", "USD/hour"),
    ("tokens_per_usd", "tok/USD", UP, True, "generated tokens per US dollar of rental", "tokens per USD"),
    ("usd_per_mtok", "USD/Mtok", DOWN, True, "US dollars per million generated tokens", "USD per M tokens"),
    ("net_bytes_per_token", "B/token", DOWN, False,
     "bytes between the compute and attention pools per generated token, all layers", "link bytes/token"),
    ("net_peak_gbps", "Gb/s", DOWN, False,
     "highest per-iteration link rate between the pools (the bandwidth the run needs)", "link peak (Gb/s)"),
    ("dense_ms", "ms", DOWN, True, "dense part (norms, projections, MLP, head) per decode iteration",
     "dense (ms/iter)"),
    ("attention_ms", "ms", DOWN, True, "attention per decode iteration", "attention (ms/iter)"),
    ("network_ms", "ms", DOWN, True, "time on the link between the pools per decode iteration",
     "network (ms/iter)"),
    ("idle_ms", "ms", DOWN, True, "compute pool waiting per decode iteration", "idle (ms/iter)"),
    ("energy_j", "J", DOWN, True, "energy of every device over the point (NVML counter)", "energy (J)"),
    ("energy_j_per_token", "J/token", DOWN, False, "energy per generated token", "energy per token (J)"),
    ("power_w_mean", "W", NEUTRAL, False, "mean board power, summed over devices", "power mean (W)"),
    ("sm_busy_pct_mean", "%", NEUTRAL, False, "share of time a kernel ran (NVML utilization.gpu)",
     "SM busy mean (%)"),
    ("mem_busy_pct_mean", "%", NEUTRAL, False,
     "share of TIME device memory was read or written (NVML utilization.memory); not a bandwidth",
     "memory busy mean (% of time)"),
    ("dram_bw_util_pct_mean", "%", NEUTRAL, False, "DRAM bandwidth used, percent of peak (NVML GPM)",
     "DRAM bandwidth mean (%)"),
    ("op_time_us", "us", DOWN, False,
     "time of one operator call (a kernel, a layer's dense part or a collective), measured or predicted",
     "operator time (us)"),
)  # fmt: skip
# Per-request latencies with the names of vLLM's serving benchmark (benchmarks/benchmark_serving.py), in ms.
_LATENCIES = {
    "ttft": "time to first token",
    "tpot": "time per output token after the first, per request",
    "itl": "time between consecutive tokens of a request",
    "e2el": "end-to-end latency of a request",
}
_TABLE += tuple(
    (f"{stat}_{kind}_ms", "ms", DOWN, True, f"{meaning}, {stat} over requests", f"{kind.upper()} {stat} (ms)")
    for kind, meaning in _LATENCIES.items()
    for stat in ("mean", "median", "p90", "p99")
)

# Per-request latencies with the names of vLLM's serving benchmark (benchmarks/benchmark_serving.py), in ms.
_LATENCIES = {
    "ttft": "time to first token",
    "tpot": "time per output token after the first, per request",
    "itl": "time between consecutive tokens of a request",
    "e2el": "end-to-end latency of a request",
}
_TABLE += tuple(
    (f"{stat}_{kind}_ms", "ms", DOWN, True, f"{meaning}, {stat} over requests", f"{kind.upper()} {stat} (ms)")
    for kind, meaning in _LATENCIES.items()
    for stat in ("mean", "median", "p90", "p99")
)

# Serving rates over the whole run (vLLM's benchmark duration: first arrival to last token) and the wait
# before a request's first scheduled work (model/summary.py).
_TABLE += (
    ("request_throughput", "req/s", UP, True, "served requests per second", "request throughput (req/s)"),
    ("output_throughput", "tok/s", UP, True, "generated tokens per second over the whole run",
     "output throughput (tok/s)"),
    ("total_token_throughput", "tok/s", UP, True, "prompt + generated tokens per second over the whole run",
     "total token throughput (tok/s)"),
    ("request_goodput", "req/s", UP, True, "requests per second meeting the TTFT and TPOT SLOs",
     "goodput (req/s)"),
    *((f"{stat}_queueing_delay_ms", "ms", DOWN, True,
       f"arrival to first scheduled work (admission or prefill start), {stat} over requests",
       f"queueing delay {stat} (ms)") for stat in ("mean", "median", "p99")),
    ("capacity_req_per_s", "req/s", UP, False,
     "highest Poisson request rate whose p99 TTFT and p99 TPOT meet the SLO (model/capacity.py)",
     "capacity at SLO (req/s)"),
    ("capacity_usd_per_mtok", "USD/Mtok", DOWN, False,
     "US dollars per million output tokens at the capacity rate", "USD per M tokens at capacity"),
)  # fmt: skip

METRICS: dict[str, Metric] = {row[0]: Metric(*row) for row in _TABLE}

# Parts of the per-pool time per decode iteration (`PointRow.pools`), ms.
POOL_PARTS = ("dense_ms", "attention_ms", "network_ms", "idle_ms", "other_ms")


def metric(name: str) -> Metric:
    """The registered metric `name`; ValueError naming the valid ones otherwise."""
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; registered: {', '.join(METRICS)}") from None


def metric_names() -> tuple[str, ...]:
    return tuple(METRICS)


def ci_metrics() -> tuple[str, ...]:
    return tuple(m.name for m in METRICS.values() if m.has_ci)


def register(new: Metric) -> Metric:
    """Add a metric (a name already registered is an error); returns it."""
    if new.name in METRICS:
        raise ValueError(f"metric {new.name!r} is already registered")
    METRICS[new.name] = new
    return new
