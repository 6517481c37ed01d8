"""`[[modeled]]` blocks: models x traces x device mixes x batch caps, priced by one price set.

Mixes come from explicit lists (`homogeneous = ["4xH100"]`, `lamina = [{compute, attention,
pipeline_batches}]`: a mix that cannot run is an error) and from grids (a combination that cannot run for
a model — weights that do not fit, more attention devices than KV heads, heads not divisible by the TP
degree — is skipped and counted):

    [[modeled]]
    models = ["llama3-70b"]
    traces = ["azure-conv", "azure-code", "kimi-conv"]
    prices = "coreweave-ondemand-2026-09-20"     # the price set for every device (default: DEFAULT_PRICE_SET)
    requests = 2000                               # first N requests of each trace (0 = all)
    homogeneous_devices = ["H100", "H200"]        # homogeneous grid: device x TP degree
    tp = [2, 4, 8]
    lamina_compute = ["H100"]                     # Lamina grid: compute x memory device x counts x depth
    lamina_attention = ["L40S", "A100-80G"]
    compute_counts = [1, 2]
    attention_counts = [2, 4, 8]
    lamina_pipeline_batches = [2]
    batch_caps = [16, 64, 0]                      # concurrency sweep: cap on running requests (0 = none)
    slo_ms = [40, 100, 200]                       # TBT p99 targets the report's verdict is drawn at
    scheduler = "reserve-all"                     # or "vllm" (model/scheduler.py, vLLM's default knobs)
    prefill_pool = "2xH100"                       # vllm: prefill on a pool of its own (default "": colocated)
    ttft_slo_ms = 2000                            # vllm: SLOs of request_goodput (0 = none)
    tpot_slo_ms = 100
    capacity = true                               # vllm: also the capacity at the SLOs (model/capacity.py;
                                                  # over `requests`, or the first 1000 when 0)

Mixture-of-experts models take AFD too (`systems = [..., "afd"]`): explicit `afd = [{attention = "4xH20",
experts = "8xH100", pipeline_batches = 2}]` and the grid `afd_attention` x `afd_experts` devices x
`attention_counts` x `expert_counts` x `afd_pipeline_batches` (a dense model skips the AFD grid).

Every device of every mix must have a price in the block's price set (an explicit ask for an unpriced
device is an error naming the devices the set prices).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from lamina_bench.catalog.devices import DeviceMix, get_device, load_catalog, parse_mix
from lamina_bench.catalog.models import get_model, list_models
from lamina_bench.catalog.prices import DEFAULT_PRICE_SET, get_price_set
from lamina_bench.catalog.workloads import TRACES, load_trace
from lamina_bench.errors import UserInputError
from lamina_bench.model.cost import require_prices
from lamina_bench.model.iteration import iteration_model
from lamina_bench.model.prefill_pool import prefill_pool
from lamina_bench.model.scheduler import SCHEDULERS, Scheduler
from lamina_bench.model.simulator import ARRIVALS
from lamina_bench.model.system import SYSTEMS, SystemConfig, memory_plan
from lamina_bench.sweep.blocks import (
    check_keys,
    check_systems,
    positive_ints,
    positive_numbers,
    with_defaults,
)
from lamina_bench.sweep.points import ModeledConfig, Point

MODELED_KEYS: dict[str, tuple[type, object]] = {
    "models": (list, None),
    "traces": (list, ["azure-conv"]),
    "systems": (list, ["homogeneous", "lamina"]),
    "prices": (str, DEFAULT_PRICE_SET),
    "homogeneous": (list, []),
    "lamina": (list, []),
    "homogeneous_devices": (list, []),
    "tp": (list, [1, 2, 4, 8]),
    "lamina_compute": (list, []),
    "lamina_attention": (list, []),
    "compute_counts": (list, [1, 2, 4]),
    "attention_counts": (list, [1, 2, 4, 8]),
    "lamina_pipeline_batches": (list, [2]),
    "afd": (list, []),
    "afd_attention": (list, []),
    "afd_experts": (list, []),
    "expert_counts": (list, [1, 2, 4, 8]),
    "afd_pipeline_batches": (list, [2]),
    "batch_caps": (list, [0]),
    "slo_ms": (list, []),
    "requests": (int, 0),  # 0 = the whole trace
    "arrival": (str, "saturate"),
    "rate_per_s": (float, 0.0),
    "dtype": (str, "fp16"),
    "scheduler": (str, "reserve-all"),
    "prefill_pool": (str, ""),
    "ttft_slo_ms": (float, 0.0),
    "tpot_slo_ms": (float, 0.0),
    "capacity": (bool, False),
}
MAY_BE_EMPTY = (
    "homogeneous",
    "lamina",
    "homogeneous_devices",
    "lamina_compute",
    "lamina_attention",
    "slo_ms",
    "afd",
    "afd_attention",
    "afd_experts",
)
_LAMINA_MIX_KEYS = ("compute", "attention", "pipeline_batches")
_AFD_MIX_KEYS = ("attention", "experts", "pipeline_batches")
_DEVICE_KEYS = ("homogeneous_devices", "lamina_compute", "lamina_attention", "afd_attention", "afd_experts")
_COUNT_KEYS = ("tp", "compute_counts", "attention_counts", "lamina_pipeline_batches", "expert_counts")
_COUNT_KEYS += ("afd_pipeline_batches",)


def modeled_block(block: dict, where: str) -> dict:
    """A `[[modeled]]` table checked and with defaults filled in; an empty list names the valid values
    (the devices the block's price set prices, the models, traces, systems)."""
    b_prices = block.get("prices", DEFAULT_PRICE_SET)
    try:
        priced = list(get_price_set(b_prices).prices) if isinstance(b_prices, str) else []
    except UserInputError as exc:
        raise UserInputError(f"{where}: {exc}") from None
    named = {
        "models": [m.name for m in list_models()],
        "traces": list(TRACES),
        "systems": list(SYSTEMS),
        **{key: priced for key in _DEVICE_KEYS},
        **{key: ["positive integers"] for key in _COUNT_KEYS},
        "batch_caps": ["integers >= 0, 0 = no cap"],
        "slo_ms": ["positive numbers"],
    }
    return with_defaults(block, MODELED_KEYS, where, MAY_BE_EMPTY, lambda key: ", ".join(named.get(key, [])))


@dataclass(frozen=True)
class _Mix:
    system: str
    compute: DeviceMix
    attention: DeviceMix | None
    depth: int
    explicit: bool  # from a list (must run) or from a grid (skipped when it cannot)


def _check_block(b: dict, where: str) -> None:
    check_systems(b["systems"], where)
    for m in b["models"]:
        get_model(m)  # unknown names: the valid models
    for t in b["traces"]:
        if t not in TRACES:
            raise UserInputError(f"{where}: unknown trace {t!r}; valid: {', '.join(TRACES)}")
    arrivals = [a for a in ARRIVALS if a != "concurrency"]  # a closed loop needs `simulate --concurrency`
    if b["arrival"] not in arrivals:
        raise UserInputError(f"{where}: unknown arrival {b['arrival']!r}; valid: {', '.join(arrivals)}")
    if b["scheduler"] not in SCHEDULERS:
        raise UserInputError(f"{where}: unknown scheduler {b['scheduler']!r}; valid: {', '.join(SCHEDULERS)}")
    if b["arrival"] == "poisson" and not b["rate_per_s"] > 0:
        raise UserInputError(f"{where}: arrival = 'poisson' needs rate_per_s > 0")
    if b["requests"] < 0:
        raise UserInputError(f"{where}: 'requests' must be >= 0 (0 = the whole trace), got {b['requests']}")
    for t in b["traces"]:
        available = len(load_trace(t))
        if b["requests"] > available:
            raise UserInputError(
                f"{where}: requests = {b['requests']} but trace {t} has {available}; "
                f"give at most {available}, or 0 for the whole trace"
            )
    for key in _COUNT_KEYS:
        positive_ints(b[key], key, where)
    positive_ints(b["batch_caps"], "batch_caps", where, zero_ok=True)
    positive_numbers(b["slo_ms"], "slo_ms", where)
    _check_serving(b, where)


def _check_serving(b: dict, where: str) -> None:
    """The prefill pool, the TTFT / TPOT SLOs and the capacity need the vllm scheduler and sane values."""
    given = [k for k in ("prefill_pool", "ttft_slo_ms", "tpot_slo_ms", "capacity") if b[k]]
    if given and b["scheduler"] != "vllm":
        raise UserInputError(
            f'{where}: {", ".join(given)} need scheduler = "vllm" (reserve-all is decode only)'
        )
    for key in ("ttft_slo_ms", "tpot_slo_ms"):
        if b[key] < 0:
            raise UserInputError(f"{where}: '{key}' must be a positive number of ms (0 = none), got {b[key]}")
    if b["capacity"] and not (b["ttft_slo_ms"] > 0 and b["tpot_slo_ms"] > 0):
        raise UserInputError(f"{where}: capacity = true needs ttft_slo_ms and tpot_slo_ms > 0")


def _explicit_mixes(b: dict, catalog, where: str) -> list[_Mix]:
    mixes = []
    if "homogeneous" in b["systems"]:
        mixes += [_Mix("homogeneous", parse_mix(m, catalog), None, 1, True) for m in b["homogeneous"]]
    if "afd" in b["systems"]:
        mixes += _explicit_afd(b, catalog, where)
    if "lamina" not in b["systems"]:
        return mixes
    for mix in b["lamina"]:
        if not isinstance(mix, dict):
            raise UserInputError(f"{where}: 'lamina' entries must be tables, got {mix!r}")
        check_keys(mix, _LAMINA_MIX_KEYS, f"{where}: lamina mix")
        if "compute" not in mix or "attention" not in mix:
            raise UserInputError(f"{where}: a lamina mix needs 'compute' and 'attention', got {mix!r}")
        depth = mix.get("pipeline_batches", 2)
        positive_ints([depth], "pipeline_batches", where)
        compute, attention = parse_mix(mix["compute"], catalog), parse_mix(mix["attention"], catalog)
        mixes.append(_Mix("lamina", compute, attention, depth, True))
    return mixes


def _explicit_afd(b: dict, catalog, where: str) -> list[_Mix]:
    """`afd = [{attention, experts, pipeline_batches}]`: the expert pool is held as the compute mix."""
    mixes = []
    for mix in b["afd"]:
        if not isinstance(mix, dict):
            raise UserInputError(f"{where}: 'afd' entries must be tables, got {mix!r}")
        check_keys(mix, _AFD_MIX_KEYS, f"{where}: afd mix")
        if "attention" not in mix or "experts" not in mix:
            raise UserInputError(f"{where}: an afd mix needs 'attention' and 'experts', got {mix!r}")
        depth = mix.get("pipeline_batches", 2)
        positive_ints([depth], "pipeline_batches", where)
        experts, attention = parse_mix(mix["experts"], catalog), parse_mix(mix["attention"], catalog)
        mixes.append(_Mix("afd", experts, attention, depth, True))
    return mixes


def _grid_mixes(b: dict, catalog) -> list[_Mix]:
    mixes = []
    if "homogeneous" in b["systems"]:
        for name, tp in itertools.product(b["homogeneous_devices"], b["tp"]):
            mixes.append(_Mix("homogeneous", DeviceMix(tp, get_device(name, catalog)), None, 1, False))
    if "lamina" in b["systems"]:
        grid = itertools.product(b["lamina_compute"], b["lamina_attention"], b["compute_counts"],
                                 b["attention_counts"], b["lamina_pipeline_batches"])  # fmt: skip
        for c, a, nc, na, depth in grid:
            compute, attention = DeviceMix(nc, get_device(c, catalog)), DeviceMix(na, get_device(a, catalog))
            mixes.append(_Mix("lamina", compute, attention, depth, False))
    if "afd" in b["systems"]:
        grid = itertools.product(b["afd_attention"], b["afd_experts"], b["attention_counts"],
                                 b["expert_counts"], b["afd_pipeline_batches"])  # fmt: skip
        for a, e, na, ne, depth in grid:
            experts, attention = DeviceMix(ne, get_device(e, catalog)), DeviceMix(na, get_device(a, catalog))
            mixes.append(_Mix("afd", experts, attention, depth, False))
    return mixes


def _runnable(model: str, mix: _Mix, dtype: str, where: str, scheduler: Scheduler) -> bool:
    """Whether `mix` can run `model`; an explicit mix that cannot is an error, a grid one is skipped."""
    try:
        config = SystemConfig(mix.system, get_model(model), mix.compute, mix.attention, dtype,
                              pipeline_batches=mix.depth if mix.system != "homogeneous" else None,
                              scheduler=scheduler)  # fmt: skip
        memory_plan(config)
        if scheduler.prefill_pool is not None:  # its weights must fit too
            prefill_pool(config, iteration_model(config))
    except UserInputError as exc:
        if mix.explicit:
            raise UserInputError(f"{where}: {exc}") from None
        return False
    return True


def modeled_points(b: dict) -> tuple[list[Point], int]:
    """The block's points and how many grid combinations were skipped because they cannot run."""
    where = b["_where"]
    _check_block(b, where)
    catalog = load_catalog(prices=b["prices"])
    mixes = _explicit_mixes(b, catalog, where) + _grid_mixes(b, catalog)
    if not mixes:
        raise UserInputError(
            f"{where}: no device mixes; give 'homogeneous' / 'lamina' / 'afd' lists or the grids "
            "'homogeneous_devices' / 'lamina_compute' + 'lamina_attention' / 'afd_attention' + 'afd_experts'"
        )
    try:
        for mix in mixes:
            require_prices(b["prices"], mix.compute, mix.attention)
    except UserInputError as exc:
        raise UserInputError(f"{where}: {exc}") from None
    pool = parse_mix(b["prefill_pool"], catalog) if b["prefill_pool"] else None
    try:
        require_prices(b["prices"], pool)
    except UserInputError as exc:
        raise UserInputError(f"{where}: {exc}") from None
    scheduler = Scheduler(b["scheduler"], **({"prefill_pool": pool} if pool else {}))
    runnable = {
        (model, i): _runnable(model, mix, b["dtype"], where, scheduler)
        for model in b["models"]
        for i, mix in enumerate(mixes)
    }
    skipped = sum(not ok for ok in runnable.values()) * len(b["traces"]) * len(b["batch_caps"])
    points = []
    for model, trace, (i, mix), cap in itertools.product(
        b["models"], b["traces"], enumerate(mixes), b["batch_caps"]
    ):
        if not runnable[(model, i)]:
            continue
        config = ModeledConfig(
            model=model, system=mix.system, trace=trace, compute=str(mix.compute),
            attention=str(mix.attention) if mix.attention else None, pipeline_batches=mix.depth,
            requests=b["requests"], arrival=b["arrival"], rate_per_s=b["rate_per_s"], dtype=b["dtype"],
            prices=b["prices"], max_batch=cap, scheduler=b["scheduler"], prefill_pool=str(pool or ""),
            ttft_slo_ms=b["ttft_slo_ms"], tpot_slo_ms=b["tpot_slo_ms"], capacity=b["capacity"],
        )  # fmt: skip
        points.append(Point("modeled", config))
    return points, skipped
