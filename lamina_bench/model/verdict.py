"""The verdict: for this model and workload, at this TBT target and under this price set, does Lamina pay?

Rows (one per configuration and batch cap, from a sweep or a search) are grouped by workload: model,
trace, the requests replayed, arrival and price set (rows of different workloads or price sets are never
compared). For each workload and TBT p99 target, the best Lamina configuration and the best homogeneous one
meeting it, by tokens per USD; the ratio; why (which pool bounds Lamina's iteration, the batch its memory
pool buys); the break-even price of the memory device (the price at which Lamina stops paying); the best
tokens per USD per compute:memory ratio of that device pair; and the link rate the winner needs. For a
mixture-of-experts model whose rows include attention-FFN disaggregation (system "afd"), the best AFD
configuration meeting the target is set beside them with its own ratio to the same homogeneous baseline.
Every figure is derived from the rows.

Default targets: MLPerf Inference v5.0's Llama-2-70B TPOT limits, 200 ms (server) and 40 ms (interactive,
"5x shorter TPOT"; mlcommons.org/2025/04/llm-inference-v5), and 100 ms between them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from lamina_bench.catalog.devices import load_catalog, parse_mix
from lamina_bench.errors import UserInputError
from lamina_bench.results.row import PointRow

DEFAULT_SLOS_MS = (40.0, 100.0, 200.0)


@dataclass(frozen=True, order=True)
class Workload:
    model: str
    trace: str
    requests: int  # first N requests of the trace (0 = all of it)
    arrival: str
    price_set: str

    def label(self) -> str:
        reqs = "all requests" if not self.requests else f"first {self.requests:,} requests"
        return f"{self.model} · {self.trace} ({reqs}, {self.arrival}) · prices {self.price_set}"


def workload_of(row: PointRow) -> Workload | None:
    """The workload of a simulated row; None for a row without a trace (a measured fixed batch)."""
    if not row.trace or not row.model:
        return None
    arrival = str(row.settings.get("arrival", "saturate"))
    prices = str(row.settings.get("prices", "catalog prices"))
    return Workload(row.model, row.trace, row.requests or 0, arrival, prices)


def comparable(rows: Iterable[PointRow]) -> dict[Workload, list[PointRow]]:
    """Ok rows with a workload, TBT p99 and tokens per USD, by workload (sorted)."""
    groups: dict[Workload, list[PointRow]] = {}
    for row in rows:
        workload = workload_of(row)
        if workload is None or not row.ok:
            continue
        if row.value("tbt_p99_ms") is None or row.value("tokens_per_usd") is None:
            continue
        groups.setdefault(workload, []).append(row)
    return dict(sorted(groups.items()))


def best(rows: Iterable[PointRow], system: str, slo_ms: float | None) -> PointRow | None:
    """The row of `system` with the most tokens per USD whose TBT p99 meets `slo_ms` (any when None)."""
    ok = [r for r in rows if r.system == system and (slo_ms is None or r.value("tbt_p99_ms") <= slo_ms)]
    return max(ok, key=lambda r: (r.value("tokens_per_usd"), -r.value("tbt_p99_ms")), default=None)


def frontier(rows: Iterable[PointRow]) -> list[PointRow]:
    """Rows no other row beats on both TBT p99 (lower) and tokens per USD (higher), by TBT p99."""
    ordered = sorted(rows, key=lambda r: (r.value("tbt_p99_ms"), -r.value("tokens_per_usd"), r.point_id))
    out, best_y = [], float("-inf")
    for row in ordered:
        if row.value("tokens_per_usd") > best_y:
            out.append(row)
            best_y = row.value("tokens_per_usd")
    return out


def _busy(pools: dict, pool: str, part: str) -> float | None:
    parts = pools.get(pool, {})
    busy, idle = parts.get(part), parts.get("idle_ms")
    if busy is None or idle is None or busy + max(idle, 0.0) <= 0:
        return None
    return busy / (busy + max(idle, 0.0))


def why(lamina: PointRow, homogeneous: PointRow) -> str:
    """One line: the batch Lamina's memory pool buys, and which pool bounds its iteration."""
    lb, hb = lamina.value("mean_batch_size"), homogeneous.value("mean_batch_size")
    parts = []
    if lb and hb:
        parts.append(f"mean batch {lb:.0f} vs {hb:.0f} ({lb / hb:.1f}x) with the KV on {lamina.attention}")
    compute, attention = (
        _busy(lamina.pools, "compute", "dense_ms"),
        _busy(lamina.pools, "attention", "attention_ms"),
    )
    if compute is not None and attention is not None:
        bound = "compute" if compute >= attention else "attention"
        parts.append(
            f"the {bound} pool bounds the iteration (busy {compute:.0%} compute, {attention:.0%} attention)"
        )
    return "; ".join(parts) or "no pool breakdown recorded"


def break_even(lamina: PointRow, homogeneous: PointRow) -> tuple[str, float] | None:
    """(memory device, price per device-hour) at which Lamina's tokens per USD equals the baseline's."""
    prices = lamina.settings.get("prices")
    tput, base = lamina.value("throughput_tok_per_s"), homogeneous.value("tokens_per_usd")
    if not prices or not lamina.attention or not tput or not base:
        return None
    try:
        catalog = load_catalog(prices=str(prices))
        compute, attention = parse_mix(lamina.compute, catalog), parse_mix(lamina.attention, catalog)
    except UserInputError:
        return None
    if compute.cost_usd_per_hour is None:
        return None
    budget = tput * 3600.0 / base  # $/h at which Lamina buys as many tokens per USD as the baseline
    return attention.device.name, (budget - compute.cost_usd_per_hour) / attention.count


def ratio_sensitivity(
    rows: Iterable[PointRow], winner: PointRow, slo_ms: float | None
) -> list[tuple[str, float]]:
    """Best tokens per USD (meeting the SLO) per compute:memory count ratio, for the winner's device pair."""
    devices = lambda mix: mix.split("x", 1)[1] if mix else None  # noqa: E731
    pair = (devices(winner.compute), devices(winner.attention))
    by_ratio: dict[str, float] = {}
    for row in rows:
        if row.system != "lamina" or (devices(row.compute), devices(row.attention)) != pair:
            continue
        if slo_ms is not None and row.value("tbt_p99_ms") > slo_ms:
            continue
        label = f"{row.compute}+{row.attention}"
        by_ratio[label] = max(by_ratio.get(label, 0.0), row.value("tokens_per_usd"))
    return sorted(by_ratio.items(), key=lambda kv: -kv[1])


@dataclass(frozen=True)
class Verdict:
    workload: Workload
    slo_ms: float | None
    lamina: PointRow | None
    homogeneous: PointRow | None
    why: str
    break_even: tuple[str, float] | None  # (memory device, USD per device-hour)
    sensitivity: tuple[tuple[str, float], ...]  # (mix, tokens per USD), best first
    afd: PointRow | None = None  # best AFD row meeting the target (MoE workloads with AFD rows)
    has_afd: bool = False  # the workload has AFD rows at all

    @property
    def afd_ratio(self) -> float | None:
        """AFD / homogeneous tokens per USD (derived)."""
        if self.afd is None or self.homogeneous is None:
            return None
        return self.afd.value("tokens_per_usd") / self.homogeneous.value("tokens_per_usd")

    @property
    def ratio(self) -> float | None:
        """Lamina / homogeneous tokens per USD (derived)."""
        if self.lamina is None or self.homogeneous is None:
            return None
        return self.lamina.value("tokens_per_usd") / self.homogeneous.value("tokens_per_usd")

    @property
    def link_gbps(self) -> float | None:
        return None if self.lamina is None else self.lamina.value("net_peak_gbps")

    def answer(self) -> str:
        """The one-line answer: pays / does not pay, by how much, or what is missing (and AFD's, if any)."""
        if self.lamina is None or self.homogeneous is None:
            missing = "Lamina" if self.lamina is None else "homogeneous"
            out = f"no {missing} configuration meets the target"
        else:
            pays = "pays" if self.ratio > 1 else "does not pay"
            out = f"Lamina {pays}: {self.ratio:.2f}x tokens per USD"
        if not self.has_afd or self.homogeneous is None:
            return out
        if self.afd is None:
            return f"{out}; no AFD configuration meets the target"
        pays = "pays" if self.afd_ratio > 1 else "does not pay"
        return f"{out}; AFD {pays}: {self.afd_ratio:.2f}x"


def verdicts(rows: Sequence[PointRow], slos_ms: Sequence[float | None] = DEFAULT_SLOS_MS) -> list[Verdict]:
    """One verdict per workload and TBT target (module doc)."""
    out = []
    for workload, group in comparable(rows).items():
        has_afd = any(r.system == "afd" for r in group)
        for slo in slos_ms:
            lamina, homog = best(group, "lamina", slo), best(group, "homogeneous", slo)
            both = lamina is not None and homog is not None
            out.append(Verdict(
                workload, slo, lamina, homog,
                why(lamina, homog) if both else "",
                break_even(lamina, homog) if both else None,
                tuple(ratio_sensitivity(group, lamina, slo)) if lamina is not None else (),
                best(group, "afd", slo), has_afd,
            ))  # fmt: skip
    return out
