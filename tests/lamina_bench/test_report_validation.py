"""The report's section on a validate run: the same error figures `lamina-bench validate` prints, a parity
figure per kind, and, given only sweep runs, how to get one. The validate run is written by the command
itself on a few committed validation files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from lamina_bench.cli import main
from lamina_bench.report import render_report
from lamina_bench.report.data import load_runs
from lamina_bench.report.validation_section import HOW_TO, is_validation_run, judgements
from lamina_bench.validate.files import DEFAULT_DIR
from lamina_bench.validate.run import run_validation
from tests.lamina_bench.test_report_fixtures import bench_like_run

# one calibration file and two validation files of two kinds and GPUs (a derived one among them)
FILES = ("aic-h100-nccltests-allreduce", "vidur-a100-dgx-send-recv", "aic-h200-vllm0240-gemm-bf16")


def validation_run(root: Path, run_id: str = "validate-test") -> Path:
    """A results run written by `lamina-bench validate --set all` on FILES (under root/files)."""
    folder = root / "files"
    folder.mkdir(exist_ok=True)
    for name in FILES:
        shutil.copy(DEFAULT_DIR / f"{name}.toml", folder)
    args = ["validate", "--set", "all", "--dir", str(folder), "--out", str(root), "--run-id", run_id]
    assert main(args) == 0
    return root / run_id


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("validate-report")
    return {"val": validation_run(root), "bench": bench_like_run(root), "files": root / "files"}


def _section(page: str, sid: str = "model-error") -> str:
    start = page.index(f'<section id="{sid}">')
    return page[start : page.index("</section>", start)]


def _specs(page: str) -> dict:
    match = re.search(r'<script type="application/json" id="report-figures">(.*?)</script>', page, re.S)
    return json.loads(match.group(1))


def test_the_section_shows_the_figures_validate_computes(runs, capsys):
    (val,) = load_runs([runs["val"]])
    assert is_validation_run(val)
    expected = run_validation("all", runs["files"])
    judged = judgements(val)
    assert len(judged) == len(expected.judged) == 54 + 15 + 250
    section = _section(render_report([val], js="/* plotly */"))
    for key in ("validation/gemm/H200", "validation/p2p/A100-80G", "calibration/allreduce/H100"):
        fig = expected.figures[key]
        row = f"<td class=num>{fig.n}</td><td class=num>{100 * fig.median:.1f}%</td>"
        assert row + f"<td class=num>{100 * fig.p90:.1f}%</td>" in section, key
    assert "calibration rows (what the constants were fitted on)" in section  # folded, after validation
    assert section.index("validation rows: error") < section.index("calibration rows (what")
    assert "vidur-a100-dgx-send-recv" in section and "microsoft/vidur" in section  # files and sources


def test_one_log_log_parity_figure_per_kind_and_split(runs):
    page = render_report(load_runs([runs["val"]]), js="/* plotly */")
    specs = [s for s in _specs(page).values() if "predicted against measured" in s["layout"]["title"]["text"]]
    titles = sorted(s["layout"]["title"]["text"].split("<br>")[0] for s in specs)
    assert titles == [
        "GEMM: predicted against measured (validation rows)",
        "all-reduce: predicted against measured (calibration rows)",
        "point-to-point: predicted against measured (validation rows)",
    ]
    for spec in specs:
        assert spec["layout"]["xaxis"]["type"] == spec["layout"]["yaxis"]["type"] == "log"
        line, *gpus = spec["data"]
        assert line["x"] == line["y"]  # the y = x line
        n = int(re.search(r"\((\d+)\)", gpus[0]["name"]).group(1))
        assert len(gpus) == 1 and len(gpus[0]["x"]) == len(gpus[0]["y"]) == n
    (gemm,) = [s for s in specs if s["layout"]["title"]["text"].startswith("GEMM")]
    assert gemm["data"][1]["name"] == "H200 (250)" and "derived" in gemm["layout"]["title"]["text"]


def test_validate_rows_stay_out_of_the_sweep_sections(runs):
    both = render_report(load_runs([runs["bench"], runs["val"]]), js="/* plotly */")
    alone = render_report(load_runs([runs["bench"]]), js="/* plotly */")
    for sid in ("verdict", "batch", "pareto", "time"):
        assert _section(both, sid) == _section(alone, sid), sid
    for sid in (
        "headline",
        "predictions",
        "telemetry",
    ):  # two runs: a run column, but no row or part of the validate run
        assert "validate-test" not in _section(both, sid), sid


def test_a_sweep_report_says_how_to_get_the_section(runs):
    section = _section(render_report(load_runs([runs["bench"]]), js="/* plotly */"))
    assert HOW_TO in section and "no validate run" in section
