"""Damaged run folders given to report, compare, merge and baseline: one line naming the file and exit 2,
never a traceback; merge and baseline leave nothing half-written; output paths are checked first."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from lamina_bench.cli import main
from lamina_bench.results.store import RunStore
from tests.lamina_bench.compare_helpers import make_row, make_store


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("good"), "good", [make_row(1), make_row(2)])


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def damaged(tmp_path: Path, good: Path, kind: str) -> tuple[Path, str]:
    """A copy of `good` damaged one way, and a phrase the error must contain."""
    run = tmp_path / kind
    shutil.copytree(good, run)
    manifest = run / "manifest.json"
    if kind == "manifest-json":
        manifest.write_text("{")
        return run, "manifest.json: not a readable run manifest"
    if kind == "manifest-binary":
        manifest.write_bytes(b"\xd7\x00\xff" * 30)
        return run, "manifest.json: not a readable run manifest"
    if kind == "manifest-list":
        manifest.write_text("[1, 2]")
        return run, "a run manifest is a JSON object, got list"
    if kind == "manifest-no-run-id":
        manifest.write_text("{}")
        return run, "the manifest has no run_id"
    if kind == "manifest-types":
        data = json.loads(manifest.read_text())
        manifest.write_text(json.dumps({**data, "git": "abc"}))
        return run, "manifest field 'git' must be an object, got 'abc'"
    if kind == "telemetry-part":
        (run / "telemetry").mkdir()
        (run / "telemetry" / "part-000000.parquet").write_bytes(b"garbage")
        return run, "part-000000.parquet: not a readable Parquet table"
    if kind == "telemetry-truncated":
        frame = RunStore.open(good).telemetry()
        frame.to_parquet(run / "telemetry.parquet")
        data = (run / "telemetry.parquet").read_bytes()
        (run / "telemetry.parquet").write_bytes(data[: len(data) // 2])
        return run, "telemetry.parquet: not a readable Parquet table"
    if kind == "telemetry-columns":
        pd.DataFrame({"a": [1, 2]}).to_parquet(run / "telemetry.parquet")
        return run, "the telemetry table lacks columns"
    if kind == "requests-part":
        (run / "requests").mkdir()
        (run / "requests" / "part-000000.parquet").write_bytes(b"PAR1 not parquet PAR1")
        return run, "part-000000.parquet: not a readable Parquet table"
    raise ValueError(kind)


MANIFEST_DAMAGE = (
    "manifest-json",
    "manifest-binary",
    "manifest-list",
    "manifest-no-run-id",
    "manifest-types",
)


@pytest.mark.parametrize("kind", MANIFEST_DAMAGE)
def test_a_damaged_manifest_is_one_line_for_every_reader(tmp_path, capsys, good_run, kind):
    run, phrase = damaged(tmp_path, good_run, kind)
    for argv in (
        ["report", run, "--out", tmp_path / "r.html"],
        ["report", "--history", run, "--out", tmp_path / "h.html"],
        ["compare", good_run, run],
        ["compare", run, good_run],
        ["merge", good_run, run, "--out", tmp_path / "merged"],
        ["baseline", "update", run, "--root", tmp_path / "baselines", "--device", "x"],
    ):
        code, err = run_cli(capsys, *argv)
        assert code == 2 and phrase in err and err.count("\n") == 1, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == [kind]  # no report, merged run or baseline


@pytest.mark.parametrize(
    "kind", ["telemetry-part", "telemetry-truncated", "telemetry-columns", "requests-part"]
)
def test_damaged_tables_fail_report_and_merge_with_one_line_and_nothing_written(
    tmp_path, capsys, good_run, kind
):
    run, phrase = damaged(tmp_path, good_run, kind)
    readers = [["merge", good_run, run, "--out", tmp_path / "merged"]]
    if kind != "requests-part":  # the report reads telemetry only
        readers.append(["report", run, "--out", tmp_path / "r.html"])
    for argv in readers:
        code, err = run_cli(capsys, *argv)
        assert code == 2 and phrase in err and err.count("\n") == 1, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == [kind]  # no half-merged run, no hidden staging
    assert main(["compare", str(good_run), str(run)]) == 0  # compare reads the points only


def test_merge_output_checked_first_and_built_aside(tmp_path, capsys, good_run):
    plain = tmp_path / "plain"
    plain.write_text("x")
    for out, phrase in (
        ("", "--out is empty"),
        (plain / "sub", "is a file, not a folder"),
        (good_run, "already exists"),
        (tmp_path / "x y", "the merged run's folder name 'x y' must be letters"),
    ):
        code, err = run_cli(capsys, "merge", good_run, "--out", out)
        assert code == 2 and phrase in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]
    assert main(["merge", str(good_run), "--out", str(tmp_path / "m")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "plain"]  # the staging folder is gone
    assert {r.point_id for r in RunStore.open(tmp_path / "m").rows()} == {
        make_row(i).point_id for i in (1, 2)
    }


def test_baseline_names_and_roots(tmp_path, capsys, good_run, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty --root or --device must not mean the current folder
    plain = tmp_path / "plain"
    plain.write_text("x")
    for argv, phrase in (
        (["update", good_run, "--device", ""], "baseline name (--device) '' must be letters"),
        (["update", good_run, "--device", "x" * 300], "1-200 characters"),
        (["update", good_run, "--root", ""], "--root is empty"),
        (["update", good_run, "--root", plain], f"--root {plain} is not a folder"),
        (["show", "--root", plain], f"--root {plain} is not a folder"),
        (["show", "x", "--root", ""], "--root is empty"),
    ):
        code, err = run_cli(capsys, "baseline", *argv)
        assert code == 2 and phrase in err and err.count("\n") == 1, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]


def test_an_interrupted_run_is_no_baseline(tmp_path, capsys, good_run):
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "status": "interrupted"}))
    code, err = run_cli(capsys, "baseline", "update", run, "--root", tmp_path / "b")
    assert code == 2 and "manifest status 'interrupted'" in err and not (tmp_path / "b" / "modeled").exists()


def test_report_output_checked_before_reading(tmp_path, capsys, good_run, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "a-folder"
    folder.mkdir()
    for i, history in enumerate(([], ["--history"])):
        for out, phrase in (("", "--out is empty"), (folder, "is a folder; give a file name")):
            code, err = run_cli(capsys, "report", *history, good_run, "--out", out)
            assert code == 2 and phrase in err and err.count("\n") == 1, err
        code, err = run_cli(capsys, "report", *history, good_run, "--out", folder / f"new{i}" / "x.html")
        assert code == 0, err  # a missing folder is made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-folder"]  # no reports/ from an empty --out


def test_history_without_plotly_is_one_line(tmp_path, capsys, good_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "plotly", None)  # import plotly now raises ImportError
    monkeypatch.setitem(sys.modules, "plotly.offline", None)
    code, err = run_cli(capsys, "report", "--history", good_run, "--out", tmp_path / "h.html")
    assert code == 2 and "plotly, which is not installed here" in err and not (tmp_path / "h.html").exists()
