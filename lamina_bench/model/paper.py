"""The paper's nine equal-cost comparisons (arXiv 2405.01814 v2): 3 models x 3 traces, Lamina vs TP."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lamina_bench.catalog.devices import DeviceSpec, load_catalog, parse_mix
from lamina_bench.catalog.models import get_model
from lamina_bench.catalog.prices import PAPER_PRICE_SET
from lamina_bench.catalog.workloads import load_trace
from lamina_bench.model.iteration import iteration_model
from lamina_bench.model.scheduler import RESERVE_ALL, Scheduler
from lamina_bench.model.simulator import SimulationResult, ratio, simulate
from lamina_bench.model.system import SystemConfig

# arXiv 2405.01814 v2 equal-cost setups: (model, Lamina compute, Lamina attention, homogeneous TP).
PAPER_SETUPS = (
    ("llama-33b", "1xH100", "2xH20", "2xH100"),
    ("llama-65b", "2xH100", "4xH20", "4xH100"),
    ("llama3-70b", "2xH100", "4xH20", "4xH100"),
)
PAPER_TRACES = ("azure-conv", "azure-code", "kimi-conv")


@dataclass(frozen=True)
class Comparison:
    model: str
    trace: str
    homogeneous: SimulationResult
    lamina: SimulationResult

    @property
    def throughput_ratio(self) -> float | None:
        """Lamina / homogeneous saturated throughput (without the drain at the end of the trace)."""
        h, la = self.homogeneous.saturated_throughput_tok_per_s, self.lamina.saturated_throughput_tok_per_s
        return None if la is None else ratio(la, h)

    @property
    def whole_trace_throughput_ratio(self) -> float | None:
        return ratio(self.lamina.throughput_tok_per_s, self.homogeneous.throughput_tok_per_s)

    @property
    def tokens_per_usd_ratio(self) -> float | None:
        h, la = self.homogeneous.saturated_tokens_per_usd, self.lamina.saturated_tokens_per_usd
        return None if la is None else ratio(la, h)


def paper_comparisons(
    requests: int | None = None,
    catalog: Mapping[str, DeviceSpec] | None = None,
    profile_dir: str | Path | None = None,
    scheduler: Scheduler = RESERVE_ALL,
) -> list[Comparison]:
    """The paper's nine comparisons (3 models x 3 traces, saturate mode, fp16, ping-pong Lamina), from
    the stored profiles in `profile_dir` where a device has one, else the roofline; priced with the
    paper's price set unless `catalog` says otherwise; `scheduler` (model/scheduler.py) for both systems."""
    catalog = load_catalog(prices=PAPER_PRICE_SET) if catalog is None else catalog
    rows = []
    for name, compute, attention, homog in PAPER_SETUPS:
        spec = get_model(name)
        lamina = SystemConfig(
            "lamina", spec, parse_mix(compute, catalog), parse_mix(attention, catalog), scheduler=scheduler
        )
        base = SystemConfig("homogeneous", spec, parse_mix(homog, catalog), scheduler=scheduler)
        models = [iteration_model(c, profile_dir=profile_dir) for c in (base, lamina)]
        for trace_name in PAPER_TRACES:
            trace = load_trace(trace_name)
            rows.append(
                Comparison(
                    name,
                    trace_name,
                    simulate(base, trace, requests=requests, model=models[0]),
                    simulate(lamina, trace, requests=requests, model=models[1]),
                )
            )
    return rows
