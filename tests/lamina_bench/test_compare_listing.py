"""Every change is listed with the threshold that judged it: in text, markdown and JSON, each compared metric
whose value changed at all appears with its verdict, the threshold percent and which threshold (modeled or
measured); unchanged metrics are counted. Exit codes are unchanged."""

from __future__ import annotations

import json

from lamina_bench.compare.compare import compare_paths
from tests.lamina_bench.compare_helpers import cli, make_row, make_store

PREDICTS = {"predicts": "0123456789abcdef"}  # a prediction calibrated from the run's own profile


def _runs(tmp_path):
    """Point 1: a prediction 20% slower (within the 25% measured threshold); point 2: modeled, 1% slower
    (judged by --threshold); point 3: measured, unchanged."""
    base = make_store(tmp_path, "base", [make_row(1, **PREDICTS), make_row(2), make_row(3, "measured")])
    head = make_store(
        tmp_path,
        "head",
        [
            make_row(1, **PREDICTS, throughput_tok_per_s=1001.0 * 0.8),
            make_row(2, throughput_tok_per_s=1002.0 * 0.99),
            make_row(3, "measured"),
        ],
    )
    return str(base), str(head)


def test_a_change_within_the_measured_threshold_is_listed_in_text(tmp_path, capsys):
    base, head = _runs(tmp_path)
    code, out, _ = cli(capsys, "compare", base, head, "--threshold", "2")
    assert code == 0, out  # 20% < 25% measured, 1% < 2% modeled: still a pass
    listed = [line for line in out.splitlines() if line.startswith("OK (WITHIN THRESHOLD)")]
    assert len(listed) == 2, out
    prediction = next(line for line in listed if make_row(1).point_id in line)
    assert "throughput_tok_per_s: 1001 -> 800.8 (-20.00%) threshold 25% measured" in prediction
    modeled = next(line for line in listed if make_row(2).point_id in line)
    assert "(-1.00%) threshold 2% modeled" in modeled
    assert make_row(3, "measured").point_id not in out  # nothing of the unchanged point is listed ...
    assert "2 within threshold, 7 unchanged metrics" in out  # ... it is counted


def test_markdown_and_json_carry_verdict_and_threshold_of_every_change(tmp_path, capsys):
    base, head = _runs(tmp_path)
    code, out, _ = cli(capsys, "compare", base, head, "--format", "markdown")
    assert code == 1  # the modeled 1% change fails at the default exact threshold
    rows = [line for line in out.splitlines() if line.startswith("| llama")]
    assert len(rows) == 2
    assert any("| -20.00% | ok (within threshold) | 25% measured |" in r for r in rows), rows
    assert any("| -1.00% | **regression** | 0% modeled |" in r for r in rows), rows
    code, out, _ = cli(capsys, "compare", base, head, "--format", "json")
    data = json.loads(out)
    assert code == data["exit_code"] == 1
    by_key = {p["key"]: p for p in data["points"]}

    def metric(i: int, name: str) -> dict:
        return next(m for m in by_key[make_row(i).point_id]["metrics"] if m["metric"] == name)

    tput = metric(1, "throughput_tok_per_s")
    assert (tput["verdict"], tput["changed"], tput["threshold_pct"], tput["threshold"]) == (
        "ok",
        True,
        25.0,
        "measured",
    )
    assert metric(1, "tbt_p99_ms")["changed"] is False
    assert (metric(2, "throughput_tok_per_s")["verdict"], metric(2, "throughput_tok_per_s")["threshold"]) == (
        "regression",
        "modeled",
    )
    assert by_key[make_row(3, "measured").point_id]["threshold"] == "measured"
    assert data["counts"]["metrics_within_threshold"] == 1 and data["counts"]["metrics_unchanged"] == 7


def test_report_only_changes_name_their_threshold(tmp_path, capsys):
    base, head = _runs(tmp_path)
    code, out, _ = cli(capsys, "compare", base, head, "--threshold", "2", "--measured-threshold", "report")
    assert code == 0
    line = next(line for line in out.splitlines() if make_row(1).point_id in line)
    assert line.startswith("REGRESSION (REPORT ONLY)") and line.endswith("threshold report only measured")


def test_float_noise_is_not_a_change(tmp_path):
    base = make_store(tmp_path, "base", [make_row(1)])
    head = make_store(tmp_path, "head", [make_row(1, throughput_tok_per_s=1001.0 * (1 + 1e-12))])
    report = compare_paths(base, head)
    assert report.exit_code == 0 and not any(d.changed for p in report.points for d in p.deltas)
