"""TEST DATA for the report tests: small run folders written through RunStore with synthetic rows.

Every number here is made up (clearly test data), shaped like the rows the sweep writes: measured CPU
points with their modeled predictions, modeled trace points on the paper's device mixes (prices from the
catalog: H100 $11.06/h, H20 $4.63/h), per-pool breakdowns, NVML-like telemetry, and failed points.
The builders are imported by test_report.py and test_report_browser.py; the tests in this file only
check that the fixtures are what the other tests assume.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from lamina_bench.catalog.devices import load_catalog
from lamina_bench.catalog.devices import parse_mix as _parse_mix
from lamina_bench.catalog.models import get_model, net_bytes_per_token_per_layer
from lamina_bench.results.row import PointRow, point_id
from lamina_bench.results.store import RunStore
from lamina_bench.results.telemetry import TELEMETRY_COLUMNS

DEVICES = [{"name": "CPU", "note": "test fixture"}]
PRICES = "paper-2025"  # the fixture's rows are priced with the paper's price set
_CATALOG = load_catalog(prices=PRICES)


def parse_mix(text: str):
    return _parse_mix(text, _CATALOG)


def _cost(*mixes: str) -> float | None:
    total = 0.0
    for text in mixes:
        price = parse_mix(text).cost_usd_per_hour
        if price is None:
            return None
        total += price
    return total


def _money(metrics: dict[str, float | None]) -> dict[str, float]:
    """The metrics that are known, with tokens_per_usd and usd_per_mtok from throughput and cost (the cost
    module's formulas) where the cost is known."""
    known = {k: v for k, v in metrics.items() if v is not None}
    cost, tput = known.get("cost_usd_per_hour"), known["throughput_tok_per_s"]
    if cost is None:
        return known
    return {**known, "tokens_per_usd": tput * 3600 / cost, "usd_per_mtok": cost / (tput * 3600) * 1e6}


def modeled_trace_row(
    model: str, trace: str, system: str, compute: str, attention: str = "", depth: int = 1, scale: float = 1.0
) -> PointRow:
    """A modeled row of a trace simulation with made-up but plausible numbers (TEST DATA)."""
    spec = get_model(model)
    n_c = parse_mix(compute).count
    n_a = parse_mix(attention).count if attention else 0
    size = spec.num_layers * spec.hidden_size / 1e5  # a made-up model-size factor
    batch = (60.0 * n_c + 90.0 * n_a) / size * 10
    tbt_ms = 8.0 * size / n_c + 0.05 * batch
    tput = batch / tbt_ms * 1e3 * scale
    config = {
        "model": model,
        "system": system,
        "compute": compute,
        "trace": trace,
        "dtype": "fp16",
        "pipeline_batches": depth,
    }
    if attention:
        config["attention"] = attention
    metrics = {
        "generated_tokens": 400_000.0,
        "throughput_tok_per_s": tput,
        "tbt_p50_ms": tbt_ms,
        "tbt_p90_ms": tbt_ms * 1.1,
        "tbt_p99_ms": tbt_ms * 1.25,
        "tbt_mean_ms": tbt_ms * 1.02,
        "mean_batch_size": batch,
        "max_batch_size": batch * 1.6,
        "cost_usd_per_hour": _cost(compute, *([attention] if attention else [])),
    }
    repro = f"lamina-bench simulate --model {model} --system {system} --compute {compute} --trace {trace}" + (
        f" --attention {attention} --pipeline-batches {depth}" if attention else ""
    )
    dense, attn = 0.6 * tbt_ms, 0.3 * tbt_ms
    if system == "lamina":
        net_bytes = float(net_bytes_per_token_per_layer(spec, "fp16") * spec.num_layers)
        network, idle_c, idle_a = 0.05 * tbt_ms, 0.05 * tbt_ms, 0.35 * tbt_ms
        pools = {
            "compute": {"dense_ms": dense, "network_ms": network, "idle_ms": idle_c},
            "attention": {"attention_ms": attn, "network_ms": network, "idle_ms": idle_a},
        }
        metrics.update(
            net_bytes_per_token=net_bytes,
            net_peak_gbps=net_bytes * tput * 8 / 1e9 * 1.3,
            dense_ms=dense,
            attention_ms=attn,
            network_ms=network,
            idle_ms=idle_c,
        )
    else:
        pools = {
            "compute": {"dense_ms": dense, "attention_ms": attn, "network_ms": 0.0, "idle_ms": 0.1 * tbt_ms}
        }
        metrics.update(
            net_bytes_per_token=0.0,
            net_peak_gbps=0.0,
            dense_ms=dense,
            attention_ms=attn,
            network_ms=0.0,
            idle_ms=0.1 * tbt_ms,
        )
    return PointRow(
        **config,
        point_id=point_id({"mode": "modeled", **config}),
        source="modeled",
        profile="roofline",
        requests=2000,
        settings={"arrival": "saturate", "prices": PRICES, "test_data": True},
        metrics=_money(metrics),
        pools=pools,
        repro_command=repro,
    )


def measured_cpu_rows(batch_sizes=(1, 4), failed_lamina_batch: int | None = 4) -> list[PointRow]:
    """Measured CPU points (homogeneous and Lamina) with a modeled prediction each (TEST DATA).

    The Lamina point at `failed_lamina_batch` fails, as a measured point can.
    """
    rows = []
    for system in ("homogeneous", "lamina"):
        for batch in batch_sizes:
            config = {
                "model": "bench-llama-gqa",
                "system": system,
                "compute": "1xcpu",
                "batch_size": batch,
                "context_len": 128,
                "pipeline_batches": 2 if system == "lamina" else 1,
                "dtype": "fp32",
            }
            if system == "lamina":
                config["attention"] = "1xcpu"
            measured_id = point_id({"mode": "measured", **config})
            repro = f"lamina-bench run default_sweep.toml --point {measured_id}"
            settings = {"device": "cpu", "new_tokens": 16, "tp": 1, "test_data": True}
            tbt_ms = 20.0 + 4.0 * batch + (6.0 if system == "lamina" else 0.0)
            if system == "lamina" and batch == failed_lamina_batch:
                rows.append(
                    PointRow(
                        **config,
                        point_id=measured_id,
                        source="measured",
                        status="failed",
                        error="RuntimeError: gloo connection reset (test data)",
                        settings=settings,
                        repro_command=repro,
                    )
                )
            else:
                rows.append(
                    PointRow(
                        **config,
                        point_id=measured_id,
                        source="measured",
                        repeats=3,
                        settings=settings,
                        metrics={
                            "throughput_tok_per_s": batch / tbt_ms * 1e3,
                            "tbt_p50_ms": tbt_ms,
                            "tbt_p90_ms": tbt_ms * 1.1,
                            "tbt_p99_ms": tbt_ms * 1.3,
                            "tbt_mean_ms": tbt_ms * 1.05,
                            "mean_batch_size": float(batch),
                            "max_batch_size": float(batch),
                            "dense_ms": 0.7 * tbt_ms,
                            "attention_ms": 0.2 * tbt_ms,
                            "network_ms": 0.05 * tbt_ms if system == "lamina" else 0.0,
                            "idle_ms": 0.05 * tbt_ms,
                        },
                        ci={"tbt_p50_ms": (tbt_ms * 0.95, tbt_ms * 1.05)},
                        telemetry_verdict="invalid: no NVML: nvmlInit failed (NVMLError_LibraryNotFound)",
                        repro_command=repro,
                    )
                )
            pred_tbt = tbt_ms * (0.9 if system == "homogeneous" else 1.2)
            rows.append(
                PointRow(
                    **config,
                    point_id=point_id({"mode": "modeled", **config, "predicts": "measured"}),
                    source="modeled",
                    profile="cpu-cpu",
                    settings=settings,
                    predicts=measured_id,
                    repro_command=repro,
                    metrics={
                        "throughput_tok_per_s": batch / pred_tbt * 1e3,
                        "tbt_mean_ms": pred_tbt,
                        "mean_batch_size": float(batch),
                        "max_batch_size": float(batch),
                    },
                )
            )
    return rows


def paper_rows(models=("llama-33b",), traces=("azure-conv",), scale: float = 1.0) -> list[PointRow]:
    """The paper's equal-cost pairs as modeled rows, plus a cheaper and a dearer baseline (TEST DATA)."""
    setups = {
        "llama-33b": ("1xH100", "2xH20", ["1xH100", "2xH100", "4xH100"]),
        "llama-65b": ("2xH100", "4xH20", ["2xH100", "4xH100", "8xH100"]),
        "llama3-70b": ("2xH100", "4xH20", ["2xH100", "4xH100", "8xH100"]),
    }
    rows = []
    for model in models:
        compute, attention, homogeneous = setups[model]
        for trace in traces:
            rows.append(modeled_trace_row(model, trace, "lamina", compute, attention, 2, scale))
            rows += [modeled_trace_row(model, trace, "homogeneous", mix, scale=scale) for mix in homogeneous]
    return rows


def sweep_rows_50() -> list[PointRow]:
    """50 rows: 3 models x 2 traces x 7 mixes (42 modeled) + 4 measured + 4 predictions (TEST DATA)."""
    rows = []
    lamina_mixes = {
        "llama-33b": [("1xH100", "2xH20"), ("1xH100", "4xH20"), ("2xH100", "4xH20"), ("2xH100", "2xH20")],
        "llama-65b": [("2xH100", "4xH20"), ("2xH100", "8xH20"), ("4xH100", "4xH20"), ("1xH100", "4xH20")],
        "llama3-70b": [("2xH100", "4xH20"), ("2xH100", "8xH20"), ("4xH100", "4xH20"), ("1xH100", "4xH20")],
    }
    for model, mixes in lamina_mixes.items():
        for trace in ("azure-conv", "kimi-conv"):
            for i, (compute, attention) in enumerate(mixes):
                rows.append(modeled_trace_row(model, trace, "lamina", compute, attention, 2 + i % 2))
            for mix in ("2xH100", "4xH100", "8xH100"):
                rows.append(modeled_trace_row(model, trace, "homogeneous", mix))
    rows += measured_cpu_rows(batch_sizes=(1, 8), failed_lamina_batch=None)
    assert len(rows) == 50, len(rows)
    return rows


def telemetry_frame(
    devices: int = 2,
    samples: int = 400,
    interval_s: float = 0.1,
    t0: float = 1000.0,
    points: tuple[str | None, ...] = (None,),
) -> pd.DataFrame:
    """NVML-like samples: SM and memory busy, power, clocks per device; the samples are split evenly
    between the windows of `points` (TEST DATA)."""
    records = []
    for d in range(devices):
        for i in range(samples):
            t = t0 + i * interval_s
            wave = 0.5 + 0.5 * math.sin(i / 15 + d)
            point = points[i * len(points) // samples]
            records.append(
                {
                    "device_index": d,
                    "t_mono_s": t,
                    "unix_time_s": 1.7e9 + t,
                    "point_id": point,
                    "sm_busy_pct": 60 + 35 * wave,
                    "mem_busy_pct": 30 + 50 * wave,
                    "mem_used_bytes": 40e9,
                    "power_w": 250 + 300 * wave,
                    "sm_clock_mhz": 1755.0,
                    "mem_clock_mhz": 2619.0,
                    "pcie_tx_bytes_per_s": None,
                    "pcie_rx_bytes_per_s": None,
                    "dram_bw_util_pct": None,
                    "energy_counter_j": 5e5 + i * 40.0,
                    "error": None,
                }
            )
    return pd.DataFrame(records, columns=list(TELEMETRY_COLUMNS)).astype(TELEMETRY_COLUMNS)


def write_run(
    root: Path,
    run_id: str,
    rows: list[PointRow],
    telemetry: pd.DataFrame | None = None,
    spec: dict[str, Any] | None = None,
    finalize: bool = True,
) -> Path:
    """A run folder under `root` holding `rows` (and telemetry), written through RunStore."""
    spec = spec or {"path": "test-fixture.toml", "shard": None, "toml": {"name": run_id, "test_data": True}}
    store = RunStore.create(
        root, run_id=run_id, spec=spec, argv=["lamina-bench", "run", "test-fixture.toml"], devices=DEVICES
    )
    for row in rows:
        store.add_point(row)
    if telemetry is not None:
        store.add_telemetry(telemetry)
    if finalize:
        store.finalize()
    return store.path


def bench_like_run(root: Path, run_id: str = "bench-like", scale: float = 1.0) -> Path:
    """What `make bench` writes on a CPU machine: measured CPU points + predictions + paper rows, no NVML."""
    rows = measured_cpu_rows() + paper_rows(("llama-33b", "llama3-70b"), ("azure-conv", "azure-code"), scale)
    return write_run(root, run_id, rows)


def gpu_like_run(root: Path, run_id: str = "gpu-like") -> Path:
    """Measured points with valid telemetry on two devices, one point with an invalid verdict (TEST DATA)."""
    rows = []
    for batch, verdict in ((8, "valid"), (32, "invalid: sample gap 450.0 ms > 2 x interval 100.0 ms")):
        config = {
            "model": "llama2-7b",
            "system": "homogeneous",
            "compute": "1xH100",
            "batch_size": batch,
            "context_len": 1024,
            "pipeline_batches": 1,
            "dtype": "bf16",
        }
        metrics = {
            "throughput_tok_per_s": batch * 70.0,
            "tbt_p50_ms": 14.0 + batch * 0.05,
            "tbt_p99_ms": 16.0 + batch * 0.05,
            "mean_batch_size": float(batch),
            "cost_usd_per_hour": 11.06,
            "sm_busy_pct_mean": 80.0,
            "mem_busy_pct_mean": 55.0,
            "power_w_mean": 520.0,
            "energy_j": 900.0,
        }
        rows.append(
            PointRow(
                **config,
                point_id=point_id({"mode": "measured", **config}),
                source="measured",
                metrics=_money(metrics),
                telemetry_verdict=verdict,
                repro_command="lamina-bench run gpu.toml",
            )
        )
    windows = (rows[0].point_id, None, rows[1].point_id)
    return write_run(root, run_id, rows, telemetry=telemetry_frame(points=windows))


# ---- checks of the fixtures themselves ----------------------------------------------------------------


def test_sweep_fixture_has_50_distinct_points(tmp_path):
    path = write_run(tmp_path, "sweep50", sweep_rows_50())
    rows = RunStore.open(path).rows()
    assert len(rows) == 50 and len({r.point_id for r in rows}) == 50
    assert {r.source for r in rows} == {"measured", "modeled"} and all(r.ok for r in rows)
    predictions = [r for r in rows if r.predicts]
    assert len(predictions) == 4 and {r.predicts for r in predictions} <= {r.point_id for r in rows}


def test_fixture_money_matches_catalog_prices():
    row = modeled_trace_row("llama-33b", "azure-conv", "lamina", "1xH100", "2xH20", 2)
    assert row.value("cost_usd_per_hour") == 11.06 + 2 * 4.63  # paper: 1xH100 + 2xH20 = $20.32/h
    assert math.isclose(row.value("tokens_per_usd") * row.value("usd_per_mtok"), 1e6)
    assert set(row.pools) == {"compute", "attention"} and row.settings["arrival"] == "saturate"


def test_fixture_runs_hold_what_the_report_tests_assume(tmp_path):
    rows = RunStore.open(bench_like_run(tmp_path)).rows()
    failed = [r for r in rows if not r.ok]
    assert [(r.system, r.batch_size, r.source) for r in failed] == [("lamina", 4, "measured")]
    assert sum(r.source == "modeled" and r.predicts is not None for r in rows) == 4
    gpu = RunStore.open(gpu_like_run(tmp_path))
    verdicts = [r.telemetry_verdict for r in sorted(gpu.rows(), key=lambda r: r.batch_size)]
    assert verdicts == ["valid", "invalid: sample gap 450.0 ms > 2 x interval 100.0 ms"]
    assert set(gpu.telemetry()["point_id"].dropna()) == {r.point_id for r in gpu.rows()}
