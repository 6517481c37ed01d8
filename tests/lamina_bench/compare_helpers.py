"""Helpers of the compare and baseline tests: rows worked from an index, stores, the CLI, two sweep runs."""

from __future__ import annotations

from pathlib import Path

from lamina_bench.cli import main
from lamina_bench.results.metrics import METRICS
from lamina_bench.results.row import PointRow, point_id
from lamina_bench.results.store import RunStore

REPO = Path(__file__).resolve().parents[2]

SMALL_SPEC = """
name = "regress-test"
repeats = 1

[[modeled]]
models = ["llama-33b"]
traces = ["azure-conv"]
requests = 300
prices = "paper-2025"
homogeneous = ["2xH100"]
lamina = [{ compute = "1xH100", attention = "2xH20", pipeline_batches = 2 }]
"""


def make_row(i: int, source: str = "modeled", **overrides) -> PointRow:
    """An ok row for configuration i with metrics worked from i. An override named after a registered
    metric sets that metric (None removes it); other overrides set PointRow fields."""
    metrics = {"throughput_tok_per_s": 1000.0 + i, "tbt_p99_ms": 50.0 + i, "tokens_per_usd": 2000.0 + i}
    metrics.update({name: overrides.pop(name) for name in [k for k in overrides if k in METRICS]})
    fields = dict(
        point_id=point_id({"mode": source, "i": i}),
        source=source,
        model="llama-33b",
        system="lamina",
        compute="1xH100",
        attention="2xH20",
        trace="azure-conv",
        batch_size=i,
        pipeline_batches=2,
        metrics={k: v for k, v in metrics.items() if v is not None},
    )
    return PointRow(**{**fields, **overrides})


def with_metrics(row: PointRow, **values: float) -> PointRow:
    return row.replace(metrics={**row.metrics, **values})


def make_store(root: Path, run_id: str, rows: list[PointRow], devices=None) -> Path:
    store = RunStore.create(root, run_id=run_id, spec={"name": "t"}, argv=["test"], devices=devices or [])
    for row in rows:
        store.add_point(row)
    store.finalize()
    return store.path


def stored_rows(run: Path) -> list[PointRow]:
    """The rows of a run as add_point takes them (volatile fields cleared)."""
    return [r.replace(run_id=None, timestamp=None, wall_s=None) for r in RunStore.open(run).rows()]


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err
