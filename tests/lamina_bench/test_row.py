"""Point rows: the JSON record round trip, validation on construction, and version-1 records read back."""

from __future__ import annotations

import dataclasses
import json

import pytest

from lamina_bench.compare.compare import compare_paths
from lamina_bench.results.files import atomic_write_json
from lamina_bench.results.metrics import METRICS
from lamina_bench.results.row import SCHEMA_VERSION, PointRow, point_id
from lamina_bench.results.store import RunStore

PID = point_id({"test": "row"})


def full_row() -> PointRow:
    """A row with every field set away from its default (TEST DATA)."""
    return PointRow(
        point_id=PID,
        source="measured",
        status="failed",
        error="RuntimeError: boom",
        model="llama-33b",
        system="lamina",
        compute="1xH100",
        attention="2xH20",
        trace="azure-conv",
        batch_size=8,
        context_len=128,
        pipeline_batches=2,
        dtype="fp16",
        requests=300,
        settings={"arrival": "poisson", "rate_per_s": 2.5, "tp": 1, "test_data": True},
        repeat=2,
        repeats=3,
        profile="h100-roofline",
        metrics={"throughput_tok_per_s": 1200.5, "tbt_p99_ms": 51, "energy_j": 0.0},
        ci={"throughput_tok_per_s": (1100.0, 1300.0), "tbt_p99_ms": [50.0, 52.0]},
        pools={
            "compute": {"dense_ms": 30.0, "idle_ms": 0.0},
            "attention": {"attention_ms": 12.0, "other_ms": 1.0},
        },
        predicts="0123456789abcdef",
        rejected_requests=2,
        throughput_basis="saturated phase",
        whole_trace={"throughput_tok_per_s": 1000.0},
        failed_repeats=1,
        repeat_error="RuntimeError: first",
        telemetry_verdict="invalid: no NVML",
        repro_command="lamina-bench run s.toml --point x",
        wall_s=3.25,
        timestamp="2026-01-01T00:00:00.000Z",
        run_id="run-a",
    )


def test_record_round_trip_keeps_every_field():
    row = full_row()
    for f in dataclasses.fields(PointRow):  # the test covers every field, a new one included
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        assert getattr(row, f.name) != default, f.name
    record = row.to_record()
    assert record["schema"] == SCHEMA_VERSION == 2
    assert set(record) == {"schema", *(f.name for f in dataclasses.fields(PointRow))}
    text = json.dumps(record, allow_nan=False)  # plain JSON
    back = PointRow.from_record(json.loads(text))
    assert back == row
    assert back.ci == {
        "throughput_tok_per_s": (1100.0, 1300.0),
        "tbt_p99_ms": (50.0, 52.0),
    }  # lists -> tuples
    assert back.metrics["tbt_p99_ms"] == 51.0 and isinstance(back.metrics["tbt_p99_ms"], float)
    assert back.pools["attention"] == {"attention_ms": 12.0, "other_ms": 1.0}
    assert back.settings == {"arrival": "poisson", "rate_per_s": 2.5, "tp": 1, "test_data": True}
    # the record does not depend on the order the mappings were built in (stable files, readable diffs)
    shuffled = row.replace(
        metrics=dict(reversed(row.metrics.items())), settings=dict(reversed(row.settings.items()))
    )
    assert json.dumps(shuffled.to_record()) == json.dumps(record)
    assert PointRow.from_record({**record, "wall_s": 3}).wall_s == 3.0  # an integral JSON number


def test_values_intervals_config_and_replace():
    row = full_row()
    assert row.value("throughput_tok_per_s") == 1200.5 and row.value("tbt_p50_ms") is None
    assert row.interval("tbt_p99_ms") == (50.0, 52.0) and row.interval("tbt_p50_ms") is None
    for typo in ("throughput", "tbt_p99"):
        with pytest.raises(ValueError, match=f"unknown metric '{typo}'; registered: throughput_tok_per_s"):
            row.value(typo)
        with pytest.raises(ValueError, match=f"unknown metric '{typo}'"):
            row.interval(typo)
    assert not row.ok and row.replace(status="ok", error=None).ok
    assert row.config() == {
        "model": "llama-33b",
        "system": "lamina",
        "compute": "1xH100",
        "attention": "2xH20",
        "trace": "azure-conv",
        "batch_size": 8,
        "context_len": 128,
        "pipeline_batches": 2,
        "dtype": "fp16",
        "requests": 300,
        "arrival": "poisson",
        "rate_per_s": 2.5,
        "tp": 1,
        "test_data": True,
    }
    assert PointRow(point_id=PID, source="modeled", model="m").config() == {"model": "m"}  # None left out
    with pytest.raises(ValueError, match="ok row must have none"):
        row.replace(status="ok")  # replace validates like the constructor
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.status = "ok"
    given = {"tbt_p50_ms": 1.0}
    copy = PointRow(point_id=PID, source="modeled", metrics=given)
    given["bogus"] = 2.0  # the row keeps its own copy
    assert copy.metrics == {"tbt_p50_ms": 1.0}


OK_ROW = {"point_id": PID, "source": "modeled"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"point_id": "xyz"}, "point_id must be 16 lower-case hex digits, got 'xyz'"),
        ({"point_id": PID.upper()}, "16 lower-case hex"),
        ({"source": "guessed"}, "source must be one of measured, modeled, derived, got 'guessed'"),
        ({"status": "done"}, "status must be one of ok, failed"),
        ({"status": "failed"}, "a failed row needs an error message"),
        ({"status": "failed", "error": ""}, "a failed row needs an error message"),
        ({"error": "boom"}, "an ok row must have none"),
        ({"batch_size": 2.5}, "batch_size takes int, got float 2.5"),
        ({"batch_size": True}, "batch_size takes int, got bool"),
        ({"repeats": "3"}, "repeats takes int, got str"),
        ({"model": 7}, "model takes str, got int 7"),
        ({"predicts": 1}, "predicts takes str"),
        ({"wall_s": True}, "wall_s takes float, got bool"),
        ({"wall_s": 2}, "wall_s takes float, got int"),
        ({"wall_s": float("inf")}, "wall_s must be finite"),
        ({"metrics": {"throughput": 1.0}}, "unknown metric 'throughput' in metrics; registered: "),
        ({"metrics": {"tbt_p50_ms": "fast"}}, "metrics.tbt_p50_ms must be a finite number, got 'fast'"),
        ({"metrics": {"tbt_p50_ms": float("nan")}}, "metrics.tbt_p50_ms must be a finite number, got nan"),
        ({"metrics": {"tbt_p50_ms": True}}, "metrics.tbt_p50_ms must be a finite number, got True"),
        ({"metrics": {"tbt_p50_ms": None}}, "metrics.tbt_p50_ms must be a finite number, got None"),
        ({"whole_trace": {"tput": 1.0}}, "unknown metric 'tput' in whole_trace"),
        (
            {"ci": {"mean_batch_size": (1.0, 2.0)}},
            "ci for 'mean_batch_size', which is not a registered metric with a CI",
        ),
        ({"ci": {"tput": (1.0, 2.0)}}, "ci for 'tput'"),
        ({"ci": {"tbt_p50_ms": (2.0, 1.0)}}, "ci.tbt_p50_ms has low 2.0 > high 1.0"),
        ({"ci": {"tbt_p50_ms": (1.0,)}}, r"ci.tbt_p50_ms must be \[low, high\]"),
        ({"ci": {"tbt_p50_ms": (1.0, float("inf"))}}, "ci.tbt_p50_ms must be a finite number"),
        (
            {"pools": {"compute": {"gpu_ms": 1.0}}},
            r"pools.compute has unknown parts \['gpu_ms'\]; valid: dense_ms",
        ),
        ({"pools": {"compute": 3.0}}, "pools.compute must map parts to ms"),
        ({"pools": {"compute": {"dense_ms": "x"}}}, "pools.compute.dense_ms must be a finite number"),
        ({"settings": {"arrival": ["poisson"]}}, "setting arrival=\\['poisson'\\] must be a scalar"),
        (
            {"settings": {"model": "other"}},
            "setting model='other' must be a scalar outside the config columns",
        ),
        ({"metrics": None}, "metrics must be a mapping, got None"),
        ({"metrics": [["tbt_p50_ms", 1.0]]}, r"metrics must be a mapping, got \[\["),
        ({"whole_trace": None}, "whole_trace must be a mapping"),
        ({"ci": "tbt_p50_ms"}, "ci must be a mapping"),
        ({"pools": None}, "pools must be a mapping"),
        ({"settings": None}, "settings must be a mapping"),
    ],
)
def test_invalid_rows_raise_naming_the_problem(change, message):
    with pytest.raises(ValueError, match=message):
        PointRow(**{**OK_ROW, **change})
    if "point_id" not in change and change != {"wall_s": 2}:  # a record is validated the same way
        record = {**PointRow(**OK_ROW).to_record(), **change}
        with pytest.raises(ValueError, match=f"point {PID}: .*{message}"):
            PointRow.from_record(json.loads(json.dumps(record, default=list)))


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (
            {**OK_ROW, "schema": 2, "throughput": 1.0},
            r"unknown fields \['throughput'\] in a point record; valid: ",
        ),
        ({**OK_ROW, "schema": 2, "extra": {}, "run": "r"}, r"unknown fields \['extra', 'run'\]"),
        ({"schema": 2, "source": "modeled"}, "needs point_id and source"),
        ({**OK_ROW, "schema": 3}, "point record schema 3; this version reads 2"),
        (OK_ROW, "point record schema None"),
        ([OK_ROW], "must be a JSON object, got list"),
        ("{}", "must be a JSON object, got str"),
    ],
)
def test_bad_records(record, message):
    with pytest.raises(ValueError, match=message):
        PointRow.from_record(record)


# ---- version 1: flat columns and an extra_json string ---------------------------------------------------

# The version-1 store's metric and CI columns, as it wrote them (results.py before the metric registry).
V1_METRICS = ("throughput_tok_per_s", "generated_tokens", "tbt_p50_ms", "tbt_p90_ms", "tbt_p99_ms", "tbt_mean_ms",
              "mean_batch_size", "max_batch_size", "cost_usd_per_hour", "tokens_per_usd", "usd_per_mtok",
              "net_bytes_per_token", "net_peak_gbps", "dense_ms", "attention_ms", "network_ms", "idle_ms",
              "energy_j", "energy_j_per_token", "power_w_mean", "sm_busy_pct_mean", "mem_busy_pct_mean",
              "dram_bw_util_pct_mean")  # fmt: skip
V1_CI_METRICS = ("throughput_tok_per_s", "tbt_p50_ms", "tbt_p90_ms", "tbt_p99_ms", "tbt_mean_ms", "tokens_per_usd",
                 "usd_per_mtok", "dense_ms", "attention_ms", "network_ms", "idle_ms", "energy_j")  # fmt: skip
V1_COLUMNS = ("run_id", "point_id", "model", "system", "compute", "attention", "trace", "batch_size", "context_len",
              "pipeline_batches", "dtype", "requests", "repeat", "repeats", "source", "profile", "status", "error",
              *V1_METRICS, *(f"{m}_ci_{side}" for m in V1_CI_METRICS for side in ("low", "high")),
              "telemetry_verdict", "repro_command", "wall_s", "timestamp", "extra_json")  # fmt: skip


def v1_record(**values) -> dict:
    """A points/<id>.json file as the version-1 store wrote it: every column, null where missing."""
    assert set(values) <= set(V1_COLUMNS)
    return {**dict.fromkeys(V1_COLUMNS), **values}


V1_POOLS = {"compute": {"dense_ms": 14.0, "idle_ms": 0.5}, "attention": {"attention_ms": 6.0, "idle_ms": 8.5}}
V1_MEASURED = v1_record(
    run_id="old",
    point_id=PID,
    model="bench-llama-gqa",
    system="lamina",
    compute="1xcpu",
    attention="1xcpu",
    batch_size=4,
    context_len=128,
    pipeline_batches=2,
    dtype="fp32",
    repeats=5,
    source="measured",
    status="ok",
    throughput_tok_per_s=150.0,
    throughput_tok_per_s_ci_low=140.0,
    throughput_tok_per_s_ci_high=160.0,
    tbt_p50_ms=26.0,
    tbt_p50_ms_ci_low=25.0,
    tbt_p50_ms_ci_high=27.5,
    mean_batch_size=4.0,
    telemetry_verdict="invalid: no NVML",
    repro_command="lamina-bench run s.toml --point " + PID,
    wall_s=12.5,
    timestamp="2026-01-01T10:00:00.000Z",
    extra_json=json.dumps(
        {
            "device": "cpu",
            "new_tokens": 16,
            "tp": 1,
            "pools": V1_POOLS,
            "failed_repeats": 1,
            "first_error": "RuntimeError: gloo reset",
        },
        sort_keys=True,
    ),
)
V1_MODELED = v1_record(
    run_id="old",
    point_id=point_id({"test": "modeled"}),
    model="llama-33b",
    system="homogeneous",
    compute="2xH100",
    trace="azure-conv",
    pipeline_batches=1,
    dtype="fp16",
    requests=300,
    source="modeled",
    profile="roofline",
    status="ok",
    throughput_tok_per_s=1352.5,
    cost_usd_per_hour=22.12,
    network_ms=None,
    extra_json=json.dumps(
        {
            "arrival": "saturate",
            "rate_per_s": 0.0,
            "pools": {"compute": {"dense_ms": 14.0}},
            "predicts": PID,
            "rejected_requests": 3,
            "throughput_basis": "saturated phase",
            "whole_trace": {"throughput_tok_per_s": 1248.5},
        },
        sort_keys=True,
    ),
)
V1_FAILED = v1_record(
    point_id=point_id({"test": "failed"}),
    source="measured",
    status="failed",
    error="RuntimeError: out of memory",
    model="m",
    repeat=0,
)


def test_every_version_1_metric_is_still_registered():
    assert set(V1_METRICS) <= set(METRICS)  # else old runs could not be read back
    assert {m for m in V1_CI_METRICS if METRICS[m].has_ci} == set(V1_CI_METRICS)


def test_version_1_records_read_as_typed_rows():
    measured = PointRow.from_record(json.loads(json.dumps(V1_MEASURED)))
    assert measured == PointRow(
        point_id=PID,
        source="measured",
        model="bench-llama-gqa",
        system="lamina",
        compute="1xcpu",
        attention="1xcpu",
        batch_size=4,
        context_len=128,
        pipeline_batches=2,
        dtype="fp32",
        repeats=5,
        settings={"device": "cpu", "new_tokens": 16, "tp": 1},
        metrics={"throughput_tok_per_s": 150.0, "tbt_p50_ms": 26.0, "mean_batch_size": 4.0},
        ci={"throughput_tok_per_s": (140.0, 160.0), "tbt_p50_ms": (25.0, 27.5)},
        pools=V1_POOLS,
        failed_repeats=1,
        repeat_error="RuntimeError: gloo reset",
        telemetry_verdict="invalid: no NVML",
        repro_command="lamina-bench run s.toml --point " + PID,
        wall_s=12.5,
        timestamp="2026-01-01T10:00:00.000Z",
        run_id="old",
    )
    modeled = PointRow.from_record(V1_MODELED)
    assert modeled.settings == {"arrival": "saturate", "rate_per_s": 0.0}
    assert (modeled.predicts, modeled.rejected_requests, modeled.throughput_basis) == (
        PID,
        3,
        "saturated phase",
    )
    assert modeled.whole_trace == {"throughput_tok_per_s": 1248.5} and modeled.pools == {
        "compute": {"dense_ms": 14.0}
    }
    assert (
        modeled.metrics == {"throughput_tok_per_s": 1352.5, "cost_usd_per_hour": 22.12} and modeled.ci == {}
    )
    assert (modeled.profile, modeled.requests, modeled.attention) == ("roofline", 300, None)
    failed = PointRow.from_record(V1_FAILED)  # extra_json null, as on a row that had no extras
    assert (failed.status, failed.error, failed.repeat, failed.settings) == (
        "failed",
        "RuntimeError: out of memory",
        0,
        {},
    )
    assert PointRow.from_record(measured.to_record()) == measured  # written back as version 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"extra_json": "[1]"}, "extra_json must encode a JSON object"),
        ({"extra_json": "{not json"}, "Expecting property name"),
        ({"throughput": 1.0}, "unknown column 'throughput' in a version-1 point record"),
        ({"tbt_p50_ms_ci_low": 1.0}, "ci.tbt_p50_ms must be a finite number, got None"),
        ({"extra_json": json.dumps({"pools": {"compute": {"gpu_ms": 1.0}}})}, r"unknown parts \['gpu_ms'\]"),
        ({"extra_json": json.dumps({"whole_trace": {"tput": 1.0}})}, "unknown metric 'tput' in whole_trace"),
        ({"extra_json": json.dumps({"arrival": {"kind": "poisson"}})}, "setting arrival=.* must be a scalar"),
    ],
)
def test_bad_version_1_records(change, message):
    with pytest.raises(ValueError, match=message):
        PointRow.from_record({**V1_FAILED, **change})


def test_a_version_1_run_folder_reads_and_compares_with_its_version_2_copy(tmp_path):
    old = RunStore.create(tmp_path, run_id="old", spec={}, argv=["test"], devices=[])
    for record in (V1_MEASURED, V1_MODELED):
        atomic_write_json(old.path / "points" / f"{record['point_id']}.json", record)
    old.finalize()
    rows = old.rows()
    assert {r.point_id for r in rows} == {V1_MEASURED["point_id"], V1_MODELED["point_id"]}
    assert {r.point_id: r for r in rows} == {
        r["point_id"]: PointRow.from_record(r) for r in (V1_MEASURED, V1_MODELED)
    }
    new = RunStore.create(tmp_path, run_id="new", spec={}, argv=["test"], devices=[])
    for row in rows:
        new.add_point(row.replace(run_id=None))
    new.finalize()
    report = compare_paths(old.path, new.path, fail_on="change")
    assert report.exit_code == 0 and report.counts()["compared"] == 2
    assert {d.verdict for p in report.points for d in p.deltas} == {"ok"}
    assert json.loads((new.path / "points" / f"{PID}.json").read_text())["schema"] == 2
