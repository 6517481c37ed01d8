"""Best configuration for a model and trace: most tokens per dollar under a TBT SLO and a budget.

Candidates: Lamina over compute-device type x memory-device type x counts (1, 2, 4, 8 each, so every
ratio between them) x pipeline depth (1-4); homogeneous over device type x tensor-parallel count
(1, 2, 4, 8); for mixture-of-experts models also AFD over attention-device type x expert-device type x
counts (1, 2, 4, 8 each) x micro-batches (2, 3). Configurations whose weights do not fit, that exceed the
budget or lack a spec the model needs are dropped with the reason.

Two stages keep it fast: every candidate is screened with a steady-state estimate (batch = KV capacity
/ mean request reserve, capped so one iteration meets the SLO; throughput = batch / iteration time);
the best `simulate_top` of each system are then replayed on the first `requests` requests of the
trace in saturate mode, with the batch capped so the token-weighted p99 TBT meets the SLO, and ranked
by saturated tokens per dollar (see simulate.SimulationResult). `rank_by="capacity"` ranks the replayed
configurations instead by USD per million output tokens at their capacity under a TTFT and TPOT SLO
(model/capacity.py, scheduler vllm with its default knobs), cheapest first; those that meet the SLO at no
rate tried come last.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from lamina_bench.catalog.device_spec import DeviceSpec
from lamina_bench.catalog.devices import DeviceMix, get_device, load_catalog
from lamina_bench.catalog.models import ModelSpec
from lamina_bench.catalog.moe import is_moe
from lamina_bench.catalog.prices import DEFAULT_PRICE_SET
from lamina_bench.catalog.workloads import Trace, check_request_count
from lamina_bench.errors import UserInputError
from lamina_bench.model.capacity import CapacityResult, rank_by_capacity
from lamina_bench.model.cost import TP_COUNTS, require_prices
from lamina_bench.model.iteration import IterationModel, iteration_model
from lamina_bench.model.simulator import SimulationResult, check_slos, simulate
from lamina_bench.model.system import SystemConfig, memory_plan
from lamina_bench.model.verdict import Verdict, frontier, verdicts
from lamina_bench.results.row import CONFIG_FIELDS, PointRow, point_id

POOL_COUNTS = (1, 2, 4, 8)
PIPELINE_DEPTHS = (1, 2, 3, 4)
AFD_PIPELINE_DEPTHS = (2, 3)  # ping-pong and one more micro-batch in flight (MegaScale-Infer)
SEARCH_SYSTEMS = ("homogeneous", "lamina", "afd")
DEFAULT_SEARCH_REQUESTS = 4000
DEFAULT_SIMULATE_TOP = 12
RANKINGS = ("tokens_per_usd", "capacity")
SLO_RETRIES = 4  # batch-cap reductions (10% each) when the replayed p99 still misses the SLO
_NEEDED = ("bf16_flops_per_s", "mem_bandwidth_bytes_per_s", "usd_per_hour")
# map(fn, items) -> fn of each item, in order: the built-in map, or one that spreads the items over workers
Mapper = Callable[[Callable, Iterable], Iterable]


@dataclass(frozen=True)
class Candidate:
    """One evaluated configuration; `result` is None when only the estimate was made."""

    config: SystemConfig
    estimate_tokens_per_usd: float
    result: SimulationResult | None = None
    capacity: CapacityResult | None = None  # with rank_by="capacity"

    @property
    def tokens_per_usd(self) -> float | None:
        if self.result is None:
            return None
        r = self.result
        return r.saturated_tokens_per_usd if r.saturated_tokens_per_usd is not None else r.tokens_per_usd

    def to_dict(self) -> dict:
        c, r = self.config, self.result
        return {
            "system": c.system,
            "compute": str(c.compute),
            "attention": None if c.attention is None else str(c.attention),
            "pipeline_batches": c.batches,
            "max_batch_limit": c.max_batch_size,
            "tokens_per_usd": self.tokens_per_usd,
            "estimate_tokens_per_usd": self.estimate_tokens_per_usd,
            "result": None if r is None else r.to_dict(),
            **({} if self.capacity is None else {"capacity": self.capacity.to_dict()}),
        }


def candidate_row(cand: Candidate, requests: int, price_set: str) -> PointRow:
    """A replayed candidate as the row a sweep point of the same configuration would store (same id)."""
    c, r = cand.config, cand.result
    identity = {"mode": "modeled", "model": r.model, "system": c.system, "trace": r.trace, "compute": r.compute,
                "attention": r.attention or "", "pipeline_batches": c.batches, "requests": requests,
                "arrival": "saturate", "rate_per_s": 0.0, "dtype": r.dtype, "prices": price_set,
                **({"max_batch": c.max_batch_size} if c.max_batch_size else {})}  # fmt: skip
    columns = {k: identity[k] for k in CONFIG_FIELDS if identity.get(k) not in (None, "")}
    settings = {k: v for k, v in identity.items() if k not in (*CONFIG_FIELDS, "mode")}
    return PointRow(point_id=point_id(identity), **columns, settings=settings, **r.row_fields())


@dataclass(frozen=True)
class SearchResult:
    model: str
    trace: str
    requests_used: int
    tbt_slo_ms: float | None
    budget_usd_per_hour: float | None
    price_set: str
    devices: tuple[str, ...]
    screened: int  # configurations estimated (fit, within budget, SLO reachable)
    dropped: tuple[str, ...]  # "config: reason" for configurations that cannot run
    ranked: tuple[Candidate, ...]  # replayed and meeting the SLO, best tokens/$ first
    best_homogeneous: Candidate | None
    best_lamina: Candidate | None
    best_afd: Candidate | None = None  # mixture-of-experts models only
    rank_by: str = "tokens_per_usd"  # or "capacity" (module doc)

    def rows(self) -> list[PointRow]:
        return [candidate_row(c, self.requests_used, self.price_set) for c in self.ranked]

    def verdict(self) -> Verdict | None:
        """Best Lamina against best homogeneous at the SLO (model/verdict.py), from the replayed rows."""
        found = verdicts(self.rows(), [self.tbt_slo_ms])
        return found[0] if found else None

    def catalog_price(self, device: str) -> float | None:
        """The price set's USD per hour of `device`, from the replayed configurations that use it."""
        for cand in self.ranked:
            for mix in (cand.config.compute, cand.config.attention):
                if mix is not None and mix.device.name == device:
                    return mix.device.usd_per_hour
        return None

    def frontier(self) -> dict[str, list[PointRow]]:
        """Each system's replayed rows on the frontier of tokens per USD against TBT p99."""
        rows = self.rows()
        return {
            s: frontier([r for r in rows if r.system == s])
            for s in SEARCH_SYSTEMS
            if s != "afd" or self.best_afd
        }

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["ranked"] = [c.to_dict() for c in self.ranked]
        out["dropped"] = list(self.dropped[:50])  # the first 50 reasons; the count below
        out["dropped_count"] = len(self.dropped)
        out["devices"] = list(self.devices)
        for key in ("best_homogeneous", "best_lamina", "best_afd"):
            out[key] = None if getattr(self, key) is None else getattr(self, key).to_dict()
        v = self.verdict()
        out["verdict"] = None if v is None else {
            "answer": v.answer(), "tokens_per_usd_ratio": v.ratio, "afd_tokens_per_usd_ratio": v.afd_ratio,
            "why": v.why,
            "break_even": None if v.break_even is None else {"device": v.break_even[0], "usd_per_hour": v.break_even[1]},
            "link_peak_gbps": v.link_gbps, "ratio_sensitivity": [list(x) for x in v.sensitivity],
        }  # fmt: skip
        out["frontier"] = {s: [r.point_id for r in rows] for s, rows in self.frontier().items()}
        return out


def _candidate_configs(spec: ModelSpec, devices: Sequence[DeviceSpec]) -> list[SystemConfig]:
    """Every homogeneous and Lamina configuration of the grid that is structurally valid."""
    configs = []
    for dev in devices:
        for n in TP_COUNTS:
            try:
                configs.append(SystemConfig("homogeneous", spec, DeviceMix(n, dev)))
            except UserInputError:
                continue
    for cdev in devices:
        for adev in devices:
            for nc in POOL_COUNTS:
                for na in POOL_COUNTS:
                    for depth in PIPELINE_DEPTHS:
                        try:
                            cfg = SystemConfig(
                                "lamina",
                                spec,
                                DeviceMix(nc, cdev),
                                DeviceMix(na, adev),
                                pipeline_batches=depth,
                            )
                        except UserInputError:
                            continue
                        configs.append(cfg)
    return configs + (_afd_configs(spec, devices) if is_moe(spec) else [])


def _afd_configs(spec: ModelSpec, devices: Sequence[DeviceSpec]) -> list[SystemConfig]:
    """AFD configurations of the grid (attention pool x expert pool x micro-batches) that are valid."""
    configs = []
    for adev in devices:
        for edev in devices:
            for na in POOL_COUNTS:
                for ne in POOL_COUNTS:
                    for depth in AFD_PIPELINE_DEPTHS:
                        try:
                            attention, experts = DeviceMix(na, adev), DeviceMix(ne, edev)
                            configs.append(
                                SystemConfig("afd", spec, experts, attention, pipeline_batches=depth)
                            )
                        except UserInputError:
                            continue
    return configs


@dataclass(frozen=True)
class _TraceStats:
    mean_need: float  # mean KV reserve (prompt + output) per request
    min_need: int
    mean_ctx: float  # mean context a running request reads, weighted by decode steps
    requests: int


def _trace_stats(trace: Trace) -> _TraceStats:
    p = trace.prompt_len.astype(float)
    o = trace.output_len.astype(float)
    mean_ctx = float(np.sum(o * (p + (o - 1) / 2)) / np.sum(o))
    return _TraceStats(float(np.mean(p + o)), int(np.min(p + o)), mean_ctx, len(trace))


def _slo_batch(model: IterationModel, mean_ctx: float, upper: int, slo_s: float) -> int:
    """Largest batch <= upper whose iteration at the mean context meets the SLO (0 if even 1 misses).

    Iteration time grows with batch: a geometric grid brackets the answer, then every integer in the
    bracket is checked (two vectorised evaluations).
    """
    grid = np.unique(np.geomspace(1, max(upper, 1), num=128).astype(np.int64))
    ok = grid[model.time_s(grid, grid * mean_ctx) <= slo_s]
    if len(ok) == 0:
        return 0
    lo = int(ok[-1])
    nxt = grid[grid > lo]
    hi = int(nxt[0]) - 1 if len(nxt) else lo
    fine = np.arange(lo, hi + 1)
    return int(fine[model.time_s(fine, fine * mean_ctx) <= slo_s][-1])


def _estimate(
    config: SystemConfig, stats: _TraceStats, slo_s: float | None
) -> tuple[float, int | None] | None:
    """(steady tokens/$ estimate, batch cap the SLO needs or None) of one configuration; None if the
    SLO is missed even at batch 1."""
    model = iteration_model(config)
    capacity = memory_plan(config).kv_capacity_tokens
    typical = max(1, int(capacity / stats.mean_need))  # requests that fit at once, on average
    most = max(1, min(stats.requests, capacity // stats.min_need))  # the most that could ever run
    cap = None
    if slo_s is not None:
        slo_batch = _slo_batch(model, stats.mean_ctx, most, slo_s)
        if slo_batch == 0:
            return None
        cap = slo_batch if slo_batch < most else None
        typical = min(typical, slo_batch)
    tput = typical / float(model.time_s(typical, typical * stats.mean_ctx))
    cost = config.compute.cost_usd_per_hour + (
        config.attention.cost_usd_per_hour if config.attention else 0.0
    )
    return tput * 3600.0 / cost, cap


def _meets(result: SimulationResult, slo_ms: float | None) -> bool:
    return slo_ms is None or (result.tbt_p99_ms is not None and result.tbt_p99_ms <= slo_ms)


def _replay_under_slo(
    config: SystemConfig, trace: Trace, cap: int | None, slo_ms: float | None
) -> SimulationResult | None:
    """Saturate-mode replay with the batch capped so p99 TBT meets the SLO (None if it cannot)."""
    config = dataclasses.replace(config, max_batch_size=cap)
    result = simulate(config, trace)
    for _ in range(SLO_RETRIES):
        if _meets(result, slo_ms):
            return result
        new_cap = int(min(result.max_batch_size, config.max_batch_size or result.max_batch_size) * 0.9)
        if new_cap < 1:
            return None
        config = dataclasses.replace(config, max_batch_size=new_cap)
        result = simulate(config, trace)
    return result if _meets(result, slo_ms) else None


def _cost_usd_per_hour(cfg: SystemConfig) -> float:
    return cfg.compute.cost_usd_per_hour + (cfg.attention.cost_usd_per_hour if cfg.attention else 0.0)


def _screen_one(
    cfg: SystemConfig, stats: _TraceStats, slo_ms: float | None
) -> tuple[tuple[float, int | None] | None, str | None]:
    """(estimate, None) of one configuration, or (None, why it is dropped)."""
    try:
        estimate = _estimate(cfg, stats, None if slo_ms is None else slo_ms / 1e3)
    except UserInputError as exc:
        return None, f"{cfg.label()}: {exc}"
    if estimate is None:
        return None, f"{cfg.label()}: one iteration at batch 1 exceeds the {slo_ms:g} ms SLO"
    return estimate, None


def _screen(
    configs, trace, slo_ms, budget, dropped, map_fn: Mapper = map
) -> list[tuple[float, int | None, SystemConfig]]:
    """(estimate, batch cap, config) of each configuration within budget that can run; the others' reasons
    go to `dropped` (over budget: not reported one by one, there are many)."""
    affordable = [cfg for cfg in configs if budget is None or _cost_usd_per_hour(cfg) <= budget]
    screened = map_fn(partial(_screen_one, stats=_trace_stats(trace), slo_ms=slo_ms), affordable)
    scored = []
    for cfg, (estimate, reason) in zip(affordable, screened, strict=True):
        if estimate is None:
            dropped.append(reason)
        else:
            scored.append((*estimate, cfg))
    return scored


def search(
    model: ModelSpec,
    trace: Trace,
    tbt_slo_ms: float | None = None,
    budget_usd_per_hour: float | None = None,
    devices: Sequence[str] | None = None,
    requests: int = DEFAULT_SEARCH_REQUESTS,
    simulate_top: int = DEFAULT_SIMULATE_TOP,
    catalog: Mapping[str, DeviceSpec] | None = None,
    price_set: str = DEFAULT_PRICE_SET,
    rank_by: str = "tokens_per_usd",
    ttft_slo_ms: float | None = None,
    tpot_slo_ms: float | None = None,
    map_fn: Mapper = map,
) -> SearchResult:
    """Best tokens per dollar for `model` on `trace` (module doc). Devices default to every catalog
    device with a bf16 peak, a memory bandwidth and a price in `price_set` (which priced `catalog`).
    `map_fn` (like the built-in `map`, which it defaults to) runs the work done once per configuration,
    the screening estimates, the replays and the capacities, e.g. on a cluster; the result is the same."""
    if rank_by not in RANKINGS:
        raise UserInputError(f"unknown ranking {rank_by!r}; valid: {', '.join(RANKINGS)}")
    if rank_by == "capacity" and (ttft_slo_ms is None or tpot_slo_ms is None):
        raise UserInputError("ranking by capacity needs --ttft-slo-ms and --tpot-slo-ms")
    check_slos(ttft_slo_ms, tpot_slo_ms)
    if tbt_slo_ms is not None and not 0 < tbt_slo_ms < math.inf:
        raise UserInputError(f"TBT SLO must be a positive finite number of ms, got {tbt_slo_ms}")
    if budget_usd_per_hour is not None and not 0 < budget_usd_per_hour < math.inf:
        raise UserInputError(f"budget must be a positive finite number of $/hour, got {budget_usd_per_hour}")
    if requests < 1 or simulate_top < 1:
        raise UserInputError(f"requests and simulate_top must be >= 1, got {requests}, {simulate_top}")
    check_request_count(requests, trace)
    catalog = load_catalog(prices=price_set) if catalog is None else catalog
    specs = _search_devices(devices, catalog, price_set)
    subset = trace.head(requests)
    dropped: list[str] = []
    configs = _candidate_configs(model, specs)
    scored = _screen(configs, subset, tbt_slo_ms, budget_usd_per_hour, dropped, map_fn)
    ranked = _replay_best(scored, subset, tbt_slo_ms, simulate_top, dropped, map_fn)
    if rank_by == "capacity":
        ranked = rank_by_capacity(ranked, subset, ttft_slo_ms, tpot_slo_ms, map_fn)
    best_h = next((c for c in ranked if c.config.system == "homogeneous"), None)
    best_l = next((c for c in ranked if c.config.system == "lamina"), None)
    best_a = next((c for c in ranked if c.config.system == "afd"), None)
    return SearchResult(
        model.name,
        trace.name,
        len(subset),
        tbt_slo_ms,
        budget_usd_per_hour,
        price_set,
        tuple(d.name for d in specs),
        len(scored),
        tuple(dropped),
        tuple(ranked),
        best_h,
        best_l,
        best_a,
        rank_by,
    )


def _search_devices(
    devices: Sequence[str] | None, catalog: Mapping[str, DeviceSpec], price_set: str
) -> list[DeviceSpec]:
    """The named devices (each must have a price and the specs the model needs), else every such device."""
    if devices is None:
        return [d for d in catalog.values() if all(getattr(d, f) is not None for f in _NEEDED)]
    specs = [get_device(name, catalog) for name in devices]
    require_prices(price_set, *(DeviceMix(1, d) for d in specs))
    for dev in specs:
        missing = [f for f in _NEEDED if getattr(dev, f) is None]
        if missing:
            raise UserInputError(
                f"device {dev.name} has no {', '.join(missing)} in the catalog; cannot search it"
            )
    return specs


def _replay_best(
    scored, trace: Trace, slo_ms: float | None, top: int, dropped: list[str], map_fn: Mapper = map
) -> list[Candidate]:
    """Replay the `top` best-estimated configurations of each system; best saturated tokens/$ first."""
    best = [
        s
        for system in SEARCH_SYSTEMS
        for s in sorted((s for s in scored if s[2].system == system), key=lambda s: -s[0])[:top]
    ]
    replay = partial(_replay_scored, trace=trace, slo_ms=slo_ms)
    ranked = []
    for (score, _, cfg), result in zip(best, map_fn(replay, best), strict=True):
        if result is None:
            dropped.append(f"{cfg.label()}: p99 TBT misses the {slo_ms:g} ms SLO at every batch cap tried")
            continue
        ranked.append(
            Candidate(dataclasses.replace(cfg, max_batch_size=result.max_batch_limit), score, result)
        )
    ranked.sort(key=lambda c: -(c.tokens_per_usd or 0.0))
    return ranked


def _replay_scored(scored, trace: Trace, slo_ms: float | None) -> SimulationResult | None:
    _, cap, cfg = scored
    return _replay_under_slo(cfg, trace, cap, slo_ms)
