"""Per-request latencies in `lamina-bench generate --json` (both systems, with and without prefill
workers) and in measured sweep points; prefill workers give transformers' tokens on the command line."""

from __future__ import annotations

import json

import pytest
import torch

from lamina_bench.cli import main
from lamina_bench.measure.run import DecodeTimings, MeasuredConfig, run_measured
from lamina_bench.results.metrics import METRICS
from reference_impl.latency import LATENCY_KINDS, STATS
from tests.reference_impl.tiny_models import build_tiny_hf_model

NEW_TOKENS = 6
PROMPTS = [[5, 9, 200, 3], [7] * 13, [1, 2, 3], [40, 41]]
ARRIVALS = [0, 0, 1, 3]
LATENCY_NAMES = [f"{stat}_{kind}_ms" for kind in LATENCY_KINDS for stat in STATS]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(folder, transformers' greedy tokens of each prompt) for a tiny GQA Llama-3.1 model."""
    folder = tmp_path_factory.mktemp("latency_gqa")
    hf = build_tiny_hf_model("llama31-gqa", seed=6)
    hf.save_pretrained(folder)
    expected = []
    with torch.no_grad():
        for ids in PROMPTS:
            out = hf.generate(
                torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0,
            )  # fmt: skip
            expected.append(out[0, len(ids) :].tolist())
    return folder, expected


def _generate(capsys, tmp_path, folder, *options):
    path = tmp_path / "prompts.jsonl"
    lines = [
        {"prompt_ids": p, "max_new_tokens": NEW_TOKENS, "arrival_step": a}
        for p, a in zip(PROMPTS, ARRIVALS, strict=True)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    argv = [
        "generate",
        "--json",
        "--ignore-eos",
        "--model-dir",
        str(folder),
        "--prompts",
        str(path),
        *options,
    ]
    assert main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return lines[:-1], lines[-1]["summary"]


def _check_latencies(outputs, summary):
    for line in outputs:
        gaps = line["itl_ms"]
        assert 0 < line["ttft_ms"] <= line["e2el_ms"] and gaps["count"] == NEW_TOKENS - 1
        assert line["tpot_ms"] == pytest.approx((line["e2el_ms"] - line["ttft_ms"]) / (NEW_TOKENS - 1))
        assert gaps["mean"] == pytest.approx(line["tpot_ms"]) and gaps["median"] <= gaps["max"]
    ttfts = sorted(line["ttft_ms"] for line in outputs)
    assert summary["mean_ttft_ms"] == pytest.approx(sum(ttfts) / len(ttfts))
    assert summary["median_ttft_ms"] == pytest.approx((ttfts[1] + ttfts[2]) / 2)
    assert all(summary[name] is not None for name in LATENCY_NAMES)


@pytest.mark.parametrize(
    "options",
    [
        ("--system", "homogeneous"),
        ("--system", "lamina", "--attention-workers", "2", "--prefill-workers", "1"),
        pytest.param(
            ("--system", "lamina", "--attention-workers", "2", "--prefill-workers", "2"),
            marks=pytest.mark.slow,
        ),
    ],
    ids=["homogeneous", "lamina-1-prefill", "lamina-2-prefill"],
)
def test_generate_json_reports_latencies_and_transformers_tokens(options, checkpoint, tmp_path, capsys):
    folder, expected = checkpoint
    outputs, summary = _generate(capsys, tmp_path, folder, *options)
    assert [line["output_ids"] for line in outputs] == expected
    _check_latencies(outputs, summary)
    if "--prefill-workers" in options:
        assert summary["prefill_workers"] == int(options[-1])
        assert sum(w["role"] == "prefill" for w in summary["workers"]) == int(options[-1])


def test_decode_timings_carry_the_latency_metrics():
    latencies = {name: 1.0 for name in LATENCY_NAMES} | {"p99_itl_ms": None}  # an unmeasured one is left out
    metrics = DecodeTimings((2, 2), (0.01, 0.03), latencies=latencies).metrics()
    assert metrics["tbt_mean_ms"] == pytest.approx(20) and metrics["mean_ttft_ms"] == 1.0
    assert "p99_itl_ms" not in metrics and all(name in METRICS for name in metrics)


def test_a_measured_point_stores_per_request_latencies(checkpoint):
    """2 requests of 5 prompt tokens arrive together, 3 new tokens each: both first tokens come from the
    same prefill, so their TTFTs are equal, and each request has 2 gaps."""
    folder, _ = checkpoint
    config = MeasuredConfig(
        str(folder), "homogeneous", "cpu", "fp32", batch_size=2, context_len=5, new_tokens=3
    )
    metrics = run_measured(config).metrics()
    assert all(name in metrics for name in LATENCY_NAMES)
    assert metrics["mean_ttft_ms"] == pytest.approx(metrics["p99_ttft_ms"])
    assert metrics["mean_tpot_ms"] == pytest.approx(metrics["mean_itl_ms"])
    assert metrics["mean_e2el_ms"] == pytest.approx(metrics["mean_ttft_ms"] + 2 * metrics["mean_tpot_ms"])
