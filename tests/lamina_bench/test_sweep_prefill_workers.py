"""Prefill workers in measured sweep points: the spec key, the point ids (unchanged without it), a
measured row with per-request latencies, and bad values rejected with one line and exit 2."""

from __future__ import annotations

import tomllib

import pytest

from lamina_bench.cli import main
from lamina_bench.errors import UserInputError
from lamina_bench.measure.run import MeasuredConfig
from lamina_bench.results.store import RunStore
from lamina_bench.sweep.points import Point
from lamina_bench.sweep.spec import parse_spec
from reference_impl.latency import LATENCY_KINDS, STATS
from tests.reference_impl.tiny_models import build_tiny_model

BLOCK = """
[[measured]]
model = "bench-llama-gqa"
systems = ["homogeneous", "lamina"]
batch_sizes = [2]
context_lens = [16]
new_tokens = 4
attention_workers = 2
pipeline_batches = [2]
"""

# Computed with the code before prefill workers were a sweep knob (Point(kind, MeasuredConfig(
# "bench-llama-gqa", "lamina", "cpu", "fp32", batch_size=2, context_len=16, new_tokens=4,
# attention_workers=2, pipeline_batches=2)).point_id); pinned so that ids of points without prefill
# workers never move.
LAMINA_ID, LAMINA_PREDICTION_ID = "40fce5bbc80e636e", "3a852b8c95003cef"
HOMOGENEOUS_ID = "d8fedd8e6b276a06"  # the homogeneous point of BLOCK (also pinned in test_sweep.py)


def _points(block: str) -> list[Point]:
    return list(parse_spec(tomllib.loads(block)).points)


def test_spec_with_prefill_workers_expands_lamina_points_only():
    points = _points(BLOCK + "prefill_workers = [0, 1, 2]\n")
    measured = [p for p in points if p.kind == "measured"]
    assert [(p.config.system, p.config.prefill_workers) for p in measured] == [
        ("homogeneous", 0),
        ("lamina", 0),
        ("lamina", 1),
        ("lamina", 2),
    ]
    assert len({p.point_id for p in points}) == len(points) == 8  # each measured point with its prediction
    for p in points:
        prefill = p.config.prefill_workers
        assert p.identity().get("prefill_workers") == (prefill or None)
        assert p.row("cmd").settings.get("prefill_workers") == (prefill or None)
        assert ("pw=" in p.label()) == bool(prefill)
    (two,) = [p for p in measured if p.config.prefill_workers == 2]
    assert two.label() == "measured:bench-llama-gqa lamina 1xcpu+2xcpu B=2 ctx=16 n=2 pw=2"
    (prediction,) = [p for p in points if p.predicts == two.point_id]
    assert prediction.config == two.config and prediction.identity()["prefill_workers"] == 2


def test_ids_of_points_without_prefill_workers_are_unchanged():
    ids = {(p.kind, p.config.system): p.point_id for p in _points(BLOCK)}
    assert ids[("measured", "lamina")] == LAMINA_ID
    assert ids[("prediction", "lamina")] == LAMINA_PREDICTION_ID
    assert ids[("measured", "homogeneous")] == HOMOGENEOUS_ID
    zero = {(p.kind, p.config.system): p.point_id for p in _points(BLOCK + "prefill_workers = 0\n")}
    assert zero == ids  # 0 (the default) written out is the same point
    config = MeasuredConfig(
        "bench-llama-gqa", "lamina", "cpu", "fp32", batch_size=2, context_len=16, new_tokens=4,
        attention_workers=2, pipeline_batches=2, prefill_workers=1,
    )  # fmt: skip
    assert Point("measured", config).point_id not in (LAMINA_ID, HOMOGENEOUS_ID)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("prefill_workers = [-1]", "'prefill_workers' entries must be integers >= 0, got -1"),
        ("prefill_workers = [1.5]", "'prefill_workers' entries must be integers >= 0, got 1.5"),
        ("prefill_workers = ['1']", "'prefill_workers' entries must be integers >= 0, got '1'"),
        ("prefill_workers = [true]", "'prefill_workers' entries must be integers >= 0, got True"),
        ("prefill_workers = []", "'prefill_workers' is empty"),
        ("systems = ['homogeneous']\nprefill_workers = [0, 1]", "apply to the lamina system only"),
    ],
)
def test_bad_prefill_workers_fail_with_one_line_and_exit_2(line, message, tmp_path, capsys):
    block = BLOCK.replace('systems = ["homogeneous", "lamina"]\n', "") + line + "\n"
    if "systems" not in line:
        block += "systems = ['homogeneous', 'lamina']\n"
    with pytest.raises(UserInputError, match="prefill_workers"):
        parse_spec(tomllib.loads(block))
    spec = tmp_path / "spec.toml"
    spec.write_text(block)
    assert main(["run", str(spec), "--out", str(tmp_path / "out"), "--no-report"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_measured_sweep_point_with_a_prefill_worker_carries_request_latencies(tmp_path):
    """A tiny Llama-3.1 GQA checkpoint, 2 requests of 5 prompt tokens, 3 new tokens each, on 1 compute +
    1 attention + 1 prefill process (gloo on CPU): each request has a TTFT (its prefill included) and
    2 gaps, so e2el = ttft + 2 tpot per request and the means add up the same way."""
    folder = build_tiny_model("llama31-gqa", tmp_path / "tiny", seed=3)
    spec = tmp_path / "spec.toml"
    spec.write_text(
        f'name = "pw"\n[[measured]]\nmodel = "{folder}"\nsystems = ["lamina"]\nbatch_sizes = [2]\n'
        "context_lens = [5]\nnew_tokens = 3\nprefill_workers = [1]\npredict = false\n"
    )
    assert main(["run", str(spec), "--out", str(tmp_path / "out"), "--run-id", "pw", "--no-report"]) == 0
    (row,) = RunStore.open(tmp_path / "out" / "pw").rows()
    assert row.ok and row.source == "measured" and row.settings["prefill_workers"] == 1
    assert row.point_id == _points(spec.read_text())[0].point_id
    names = [f"{stat}_{kind}_ms" for kind in LATENCY_KINDS for stat in STATS]
    assert all(row.value(name) is not None for name in names), row.metrics
    ttft, tpot, e2el = (row.value(f"mean_{kind}_ms") for kind in ("ttft", "tpot", "e2el"))
    assert 0 < ttft < e2el and e2el == pytest.approx(ttft + 2 * tpot)
    assert row.value("generated_tokens") == 2 * 2  # the decode steps: 2 per request after the prefill
    assert row.value("throughput_tok_per_s") > 0 and row.value("tbt_p50_ms") > 0
