"""`lamina-bench validate`: the validation files, bad input (one line, exit 2), the figures and their gate,
and the results run it writes."""

import json
import shutil

import pytest

from lamina_bench.cli import main
from lamina_bench.results.store import RunStore
from lamina_bench.validate.figures import DEFAULT_FIGURES, figures, load_figures, regressions
from lamina_bench.validate.files import DEFAULT_DIR, KINDS, SPLITS, load_files
from lamina_bench.validate.predict import Judged
from lamina_bench.validate.rows import point_rows

GOOD = """id = "{id}"
kind = "gemm"
split = "validation"
gpu = "H200"
source = "test"
dtype = "bf16"
[[rows]]
m = 1
n = 1024
k = 1024
time_us = 4.0
"""


def test_committed_files_load_with_their_timing():
    files = load_files()
    assert (
        len(files) == 40 and {f.split for f in files} == set(SPLITS) and {f.kind for f in files} == set(KINDS)
    )
    timing = {f.id: (f.timing, f.implementation) for f in files}
    assert timing["vidur-h100-llama2-7b-mlp"] == ("kernel", "nccl")
    assert timing["aic-h100-vllm0240-gemm-bf16"] == ("graph", "nccl")
    assert timing["aic-h100-nccltests-allreduce"] == ("eager", "nccl")
    assert timing["aic-h100-vllm0240-custom-allreduce-graph"] == ("graph", "vllm")
    assert all(f.split == "calibration" for f in load_files(split="calibration"))


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda s: s.replace('source = "test"\n', ""), "missing source"),
        (lambda s: s.replace('gpu = "H200"', 'gpu = "H999"'), "unknown device"),
        (lambda s: s.replace('kind = "gemm"', 'kind = "conv"'), "unknown kind 'conv'"),
        (lambda s: s.replace('split = "validation"', 'split = "test"'), "unknown split 'test'"),
        (lambda s: s.replace("time_us = 4.0", ""), "row 0 (gemm) lacks time_us"),
        (lambda s: s + "not toml [", "is not valid TOML"),
    ],
)
def test_bad_validation_file_is_one_line_and_exit_2(tmp_path, capsys, edit, problem):
    path = tmp_path / "aic-h200-test-gemm.toml"
    path.write_text(edit(GOOD.format(id="aic-h200-test-gemm")))
    assert main(["validate", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(path) in err and problem in err


def test_validate_prints_figures_and_passes_the_committed_gate(capsys):
    assert main(["validate", "--no-store"]) == 0
    out = capsys.readouterr().out
    assert "== validation:" in out and "7 GPU types" in out and "operator (pooled) all" in out
    assert "dense op" in out and "e2e rows left out" in out
    assert "no validation figure got worse" in out


def test_validate_json_and_a_worse_figure_exits_1(tmp_path, capsys):
    committed = load_figures()
    key = "validation/operator"
    committed[key] = dict(committed[key], median_abs_err=committed[key]["median_abs_err"] - 0.01)
    data = json.loads(DEFAULT_FIGURES.read_text())
    data["figures"] = committed
    figures_file = tmp_path / "errors.json"
    figures_file.write_text(json.dumps(data))
    assert main(["validate", "--json", "--no-store", "--figures", str(figures_file)]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["regressions"] and out["regressions"][0].startswith("validation/operator: median_abs_err")
    assert out["figures"]["validation/dense_layer"]["n"] == 280
    assert {lo["reason"] for lo in out["left_out"]} and out["run"] is None


def test_regressions_only_judge_validation_figures():
    fig = {"n": 1, "median_abs_err": 0.1, "p90_abs_err": 0.2}
    assert regressions({}, {"calibration/gemm": fig}) == []
    assert regressions({}, {"validation/gemm": fig}) == [
        "validation/gemm: no longer measured (committed n=1)"
    ]


def test_update_figures_writes_every_figure(tmp_path):
    out = tmp_path / "errors.json"
    assert main(["validate", "--update-figures", "--figures", str(out)]) == 0
    written = load_figures(out)
    assert "validation/operator" in written and "calibration/gemm/H100" in written
    assert written == load_figures()  # the committed figures are today's


def _judged(**changes):
    base = dict(kind="gemm", split="validation", gpu="H200", file="f", source="s", conditions={"m": 1, "n": 2, "k": 3},
                measured=4.0, predicted=5.0, model_name="opmodel-x")  # fmt: skip
    return Judged(**(base | changes))


def test_point_rows_link_the_prediction_to_the_measurement():
    measured, modeled = point_rows(_judged())
    assert measured.source == "measured" and modeled.predicts == measured.point_id
    assert measured.value("op_time_us") == 4.0 and modeled.value("op_time_us") == 5.0
    assert measured.settings["validation_file"] == "f" and measured.compute == "1xH200"
    assert figures([_judged(), _judged(predicted=2.0)])["validation/gemm"].median == pytest.approx(0.375)


def test_validate_stores_a_results_run(tmp_path, capsys):
    folder = tmp_path / "files"
    folder.mkdir()
    for name in ("aic-h100-nccltests-allreduce", "vidur-a100-dgx-send-recv"):
        shutil.copy(DEFAULT_DIR / f"{name}.toml", folder)
    assert (
        main(["validate", "--set", "all", "--dir", str(folder), "--out", str(tmp_path), "--run-id", "v1"])
        == 0
    )
    run = RunStore.open(tmp_path / "v1")
    rows = run.rows()
    assert len(rows) == 2 * (54 + 15)
    modeled = [r for r in rows if r.predicts]
    assert {r.source for r in modeled} == {"modeled", "derived"}  # A100 p2p comes from the H100's fit
    spec = run.manifest["spec"]
    assert spec["name"] == "validate" and spec["sets"] == ["calibration", "validation"]
    assert spec["files"]["vidur-a100-dgx-send-recv"]["split"] == "validation"


def test_validate_stores_its_run_under_results_validation_runs_by_default(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "files"
    folder.mkdir()
    shutil.copy(DEFAULT_DIR / "vidur-a100-dgx-send-recv.toml", folder)
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "--dir", str(folder), "--run-id", "v2"]) == 0
    assert "rows stored as a results run: results/validation-runs/v2" in capsys.readouterr().out
    assert len(RunStore.open(tmp_path / "results" / "validation-runs" / "v2").rows()) == 2 * 15
    assert main(["validate", "--dir", str(folder), "--run-id", "v3", "--no-store"]) == 0
    assert not (tmp_path / "results" / "validation-runs" / "v3").exists()
