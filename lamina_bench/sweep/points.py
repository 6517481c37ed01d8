"""The points of a sweep: typed configurations, their stable ids, and the row each one starts from.

A point is one of three kinds:
    measured     the reference implementation runs here (`measure.run.MeasuredConfig`)
    prediction   the performance model predicts a measured configuration from this machine's profile
    modeled      the simulator replays a trace on a device mix (`ModeledConfig`)
Its id is the first 16 hex digits of the sha256 of its identity (a canonical JSON object of the
configuration), so resume, shards and `compare` match points across runs and versions. Optional knobs
enter the identity only when they differ from their default (a modeled point's batch cap, scheduler
and serving keys; a measured point's prefill workers), so adding a knob never changes the ids of the
points that leave it at its default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any

from lamina_bench.catalog.devices import DeviceSpec, load_catalog, parse_mix
from lamina_bench.catalog.models import get_model
from lamina_bench.catalog.prices import DEFAULT_PRICE_SET
from lamina_bench.measure.config import MeasuredConfig
from lamina_bench.model.scheduler import RESERVE_ALL, Scheduler
from lamina_bench.model.system import SystemConfig
from lamina_bench.results.row import CONFIG_FIELDS, PointRow, point_id

KINDS = ("measured", "prediction", "modeled")


@dataclass(frozen=True)
class ModeledConfig:
    """One simulated configuration: a system on a device mix replaying a trace."""

    model: str  # catalog slug
    system: str  # homogeneous | lamina | afd
    trace: str
    compute: str  # device mix, normalised ("2xH100"); AFD: the expert pool
    attention: str | None  # Lamina's or AFD's attention mix
    pipeline_batches: int  # 1 for homogeneous
    requests: int  # first N requests of the trace; 0 = all
    arrival: str  # saturate | trace | poisson
    rate_per_s: float  # poisson only
    dtype: str
    prices: str = DEFAULT_PRICE_SET  # the price set behind every cost figure
    max_batch: int = 0  # cap on running requests (the concurrency sweep); 0 = none
    scheduler: str = RESERVE_ALL.name  # model/scheduler.py, with its default knobs
    prefill_pool: str = ""  # vllm: prompts prefilled on this NxDEVICE pool (model/prefill_pool.py)
    ttft_slo_ms: float = 0.0  # SLOs of the goodput (and of the capacity); 0 = none
    tpot_slo_ms: float = 0.0
    capacity: bool = False  # also search the capacity at the SLOs (model/capacity.py)

    def system_config(self) -> SystemConfig:
        """The simulator's SystemConfig of this configuration, its devices priced from `prices`."""
        catalog = _catalog(self.prices)
        pooled = self.system != "homogeneous"  # Lamina, AFD: pipelined micro-batches
        return SystemConfig(
            system=self.system,
            model=get_model(self.model),
            compute=parse_mix(self.compute, catalog),
            attention=parse_mix(self.attention, catalog) if self.attention else None,
            dtype=self.dtype,
            pipeline_batches=self.pipeline_batches if pooled else None,
            max_batch_size=self.max_batch or None,
            scheduler=Scheduler(
                self.scheduler,
                **({"prefill_pool": parse_mix(self.prefill_pool, catalog)} if self.prefill_pool else {}),
            ),
        )


_SERVING_KEYS = ("prefill_pool", "ttft_slo_ms", "tpot_slo_ms", "capacity")


@cache
def _catalog(prices: str) -> dict[str, DeviceSpec]:
    return load_catalog(prices=prices)


@dataclass(frozen=True)
class Point:
    """One configuration to run; `point_id` hashes `identity()`."""

    kind: str
    config: MeasuredConfig | ModeledConfig
    point_id: str = field(init=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"point kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if isinstance(self.config, ModeledConfig) != (self.kind == "modeled"):
            raise ValueError(
                f"a {self.kind} point takes a {'Modeled' if self.kind == 'modeled' else 'Measured'}Config"
            )
        object.__setattr__(self, "point_id", point_id(self.identity()))

    @property
    def source(self) -> str:
        """The source of this point's row: measured, or modeled (predictions and simulations)."""
        return "measured" if self.kind == "measured" else "modeled"

    @property
    def predicts(self) -> str | None:
        """A prediction's measured twin (its point id); None for other kinds."""
        return Point("measured", self.config).point_id if self.kind == "prediction" else None

    def identity(self) -> dict[str, Any]:
        """The canonical configuration the id hashes (keys and values kept stable across versions)."""
        c = self.config
        if isinstance(c, ModeledConfig):
            return {
                "mode": "modeled",
                "model": c.model,
                "system": c.system,
                "trace": c.trace,
                "compute": c.compute,
                "attention": c.attention or "",
                "pipeline_batches": c.pipeline_batches,
                "requests": c.requests,
                "arrival": c.arrival,
                "rate_per_s": c.rate_per_s,
                "dtype": c.dtype,
                "prices": c.prices,
                **({"max_batch": c.max_batch} if c.max_batch else {}),
                **({"scheduler": c.scheduler} if c.scheduler != RESERVE_ALL.name else {}),
                **{k: v for k in _SERVING_KEYS if (v := getattr(c, k))},  # only when set: ids stay stable
            }
        out = {
            "mode": self.source,
            "model": c.model,
            "system": c.system,
            "device": c.device,
            "dtype": c.dtype,
            "batch_size": c.batch_size,
            "context_len": c.context_len,
            "new_tokens": c.new_tokens,
            "tp": c.tp,
            "compute": c.compute_mix,
            "attention": c.attention_mix or "",
            "pipeline_batches": c.pipeline_batches,
            **({"prefill_workers": c.prefill_workers} if c.prefill_workers else {}),  # ids stay stable
        }
        return {**out, "predicts": "measured"} if self.kind == "prediction" else out

    def row(self, repro_command: str) -> PointRow:
        """The row this point starts from: its configuration columns and settings, no numbers yet."""
        identity = self.identity()
        columns = {k: identity[k] for k in CONFIG_FIELDS if identity.get(k) not in (None, "")}
        settings = {k: v for k, v in identity.items() if k not in (*CONFIG_FIELDS, "mode", "predicts")}
        return PointRow(
            point_id=self.point_id,
            source=self.source,
            **columns,
            settings=settings,
            predicts=self.predicts,
            repro_command=repro_command,
        )

    def label(self) -> str:
        c = self.config
        mix = c.compute if isinstance(c, ModeledConfig) else c.compute_mix
        attention = c.attention if isinstance(c, ModeledConfig) else c.attention_mix
        knobs = [c.model, c.system, mix + (f"+{attention}" if attention else "")]
        if isinstance(c, ModeledConfig):
            knobs.append(c.trace)
        else:
            knobs += [f"B={c.batch_size}", f"ctx={c.context_len}"]
        if c.system in ("lamina", "afd"):
            knobs.append(f"n={c.pipeline_batches}")
        if isinstance(c, MeasuredConfig) and c.prefill_workers:
            knobs.append(f"pw={c.prefill_workers}")
        return f"{self.source}:" + " ".join(str(k) for k in knobs if k)
