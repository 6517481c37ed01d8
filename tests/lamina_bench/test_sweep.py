"""Sweeps end to end: spec validation, resume after SIGKILL, shards, measured points with predictions."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lamina_bench.errors import UserInputError
from lamina_bench.results import RunStore
from lamina_bench.sweep import parse_shard, parse_spec, shard

MODELED = """
name = "t"
[[modeled]]
models = ["llama-33b", "llama-65b"]
traces = ["azure-conv", "azure-code", "kimi-conv"]
requests = 1500
homogeneous = ["4xH100"]
lamina = [{ compute = "2xH100", attention = "4xH20", pipeline_batches = 2 }]
"""


def _cli(*args, env=None, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "lamina_bench.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        **kwargs,
    )


def _run(*args, env=None) -> subprocess.CompletedProcess:
    proc = _cli(*args, env=env)
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _spec(tmp_path, text=MODELED, name="spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _only_run(root: Path) -> Path:
    runs = [p for p in root.iterdir() if (p / "manifest.json").is_file()]
    assert len(runs) == 1, runs
    return runs[0]


def test_spec_expands_to_unique_stable_points():
    spec = parse_spec(__import__("tomllib").loads(MODELED))
    assert len(spec.points) == 2 * 3 * 2
    assert len({p.point_id for p in spec.points}) == len(spec.points)
    again = parse_spec(__import__("tomllib").loads(MODELED))
    assert [p.point_id for p in again.points] == [p.point_id for p in spec.points]


@pytest.mark.parametrize(
    "text, message",
    [
        ("name = 'x'\n[[modeled]]\nmodel = ['llama-33b']\n", "unknown key 'model'"),
        (
            "[[modeled]]\nmodels = ['llama-99b']\nhomogeneous = ['2xH100']\nsystems = ['homogeneous']\n",
            "llama-99b",
        ),
        (
            "[[modeled]]\nmodels = ['llama-65b']\nhomogeneous = ['1xH100']\nsystems = ['homogeneous']\n",
            "does not fit",
        ),
        (
            "[[modeled]]\nmodels = ['llama-33b']\nhomogeneous = ['2xH101']\nsystems = ['homogeneous']\n",
            "H101",
        ),
        ("[[measured]]\nmodel = 'bench-llama-gqa'\nbatch_sizes = [0]\n", "positive integers"),
        ("repeats = 0\n[[modeled]]\nmodels = ['llama-33b']\n", "repeats"),
        (
            "[[measured]]\nmodel = 'bench-llama-gqa'\nsystems = ['lamina']\npipeline_batches = [3]\n",
            "multiple of 2",
        ),
    ],
)
def test_bad_specs_fail_before_any_work_with_one_line_and_exit_2(tmp_path, text, message):
    proc = _run("run", _spec(tmp_path, text), "--out", tmp_path / "out", "--no-report")
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing written


def test_sigkill_then_resume_runs_every_point_exactly_once(tmp_path):
    spec, out = _spec(tmp_path), tmp_path / "out"
    proc = _cli("run", spec, "--out", out, "--no-report")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        points = list(out.glob("*/points/*.json"))
        if len(points) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = _only_run(out)
    done_before = {p.stem for p in (run_dir / "points").glob("*.json")}
    assert 3 <= len(done_before) < 12, "the kill must land half-way"
    resumed = _run("run", spec, "--out", out, "--no-report", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run_dir}" in resumed.stderr
    assert f"{12 - len(done_before)} points run, {len(done_before)} already done" in resumed.stdout
    points = RunStore.open(run_dir).points()
    assert len(points) == 12 and points["point_id"].is_unique
    expected = {p.point_id for p in parse_spec(__import__("tomllib").loads(MODELED)).points}
    assert set(points["point_id"]) == expected
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "finished"


def test_two_shards_merged_equal_the_unsharded_sweep(tmp_path):
    spec = _spec(tmp_path)
    assert _run("run", spec, "--out", tmp_path / "all", "--no-report").returncode == 0
    for i in (1, 2):
        assert (
            _run("run", spec, "--out", tmp_path / f"s{i}", "--no-report", "--shard", f"{i}/2").returncode == 0
        )
    merged = _run(
        "merge", _only_run(tmp_path / "s1"), _only_run(tmp_path / "s2"), "--out", tmp_path / "merged"
    )
    assert merged.returncode == 0, merged.stderr
    whole = RunStore.open(_only_run(tmp_path / "all")).points().set_index("point_id").sort_index()
    joined = RunStore.open(tmp_path / "merged").points().set_index("point_id").sort_index()
    assert list(joined.index) == list(whole.index)
    for metric in ("throughput_tok_per_s", "tbt_p99_ms", "tokens_per_usd"):
        assert joined[metric].tolist() == whole[metric].tolist()


def test_shard_arguments():
    assert parse_shard("2/3") == (2, 3)
    assert shard(list(range(7)), 1, 3) == [0, 3, 6]
    for bad in ("0/2", "3/2", "x", "1/0"):
        with pytest.raises(UserInputError, match="--shard"):
            parse_shard(bad)


def test_measured_points_with_predictions_and_lamina_breakdown(tmp_path):
    spec = _spec(
        tmp_path,
        """
name = "m"
repeats = 1
[[measured]]
model = "bench-llama-gqa"
systems = ["homogeneous", "lamina"]
batch_sizes = [2]
context_lens = [16]
new_tokens = 4
pipeline_batches = [2]
""",
    )
    proc = _run(
        "run", spec, "--out", tmp_path / "out", "--no-report", env={"LAMINA_BENCH_CACHE": str(tmp_path)}
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    rows = RunStore.open(_only_run(tmp_path / "out")).points().set_index("point_id")
    measured = rows[rows["source"] == "measured"]
    modeled = rows[rows["source"] == "modeled"]
    assert len(measured) == 2 and len(modeled) == 2 and (rows["status"] == "ok").all()
    assert (measured["throughput_tok_per_s"] > 0).all() and (measured["mean_batch_size"] == 2).all()
    for _, row in modeled.iterrows():
        target = json.loads(row["extra_json"])["predicts"]
        assert target in measured.index and measured.loc[target, "system"] == row["system"]
    lamina = measured[measured["system"] == "lamina"].iloc[0]
    pools = json.loads(lamina["extra_json"])["pools"]
    assert set(pools) == {"compute", "attention"} and pools["compute"]["dense_ms"] > 0
    assert lamina["net_bytes_per_token"] > 0  # measured link payload, all layers
    assert "--point" in lamina["repro_command"]
