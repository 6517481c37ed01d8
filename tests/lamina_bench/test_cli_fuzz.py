"""Hostile option values for every command: each gets one line naming what was wrong and what is valid,
exit code 2, and writes nothing. (Run folders given as inputs: test_run_inputs.py; faults while a sweep
runs: test_run_faults.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lamina_bench.cli import main

SIM = ["simulate", "--model", "llama3-70b", "--system", "homogeneous", "--compute", "4xH100"]
SIM += ["--trace", "azure-conv"]
SEARCH = ["search", "--model", "llama3-8b", "--trace", "azure-code", "--requests", "100"]
SPEC = """
name = "fuzz"
[[modeled]]
models = ["llama-33b"]
traces = ["azure-conv"]
requests = 50
homogeneous = ["2xH100"]
systems = ["homogeneous"]
"""


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(capsys, *argv) -> str:
    code, _, err = run_cli(capsys, *argv)
    assert code == 2, err
    assert err.startswith("lamina-bench: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def files(tmp_path: Path) -> dict[str, Path]:
    """Hostile input files: binary, a folder, a file below which a folder is asked for."""
    binary = tmp_path / "binary.toml"
    binary.write_bytes(bytes(range(256)) * 4)
    folder = tmp_path / "a-folder"
    folder.mkdir()
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    return {"binary": binary, "folder": folder, "file": plain, "below_file": plain / "sub"}


# ---- modeled commands: simulate, search, hardware, models ------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--requests", str(10**12)],
            "--requests 1000000000000 exceeds the 19366 requests of trace azure-conv",
        ),
        (
            ["--requests", "20", "--arrival", "poisson", "--rate", "5e-324"],
            "arrival times of 20 requests overflow",
        ),
        (["--profile-dir", ""], "--profile-dir  is not a folder"),
    ],
)
def test_simulate_bad_values(capsys, extra, message):
    assert message in one_line_error(capsys, *SIM, *extra)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\xc1\x00\xff" * 20, "H100-cuda.json is not valid JSON"),
        (b"[1]", "H100-cuda.json: profile: a profile is a JSON object, got list"),
        (b'{"format": "lamina-bench-profile/1", "versions": [1]}', "H100-cuda.json: profile: malformed"),
    ],
)
def test_simulate_with_a_damaged_profile(tmp_path, capsys, content, message):
    (tmp_path / "H100-cuda.json").write_bytes(content)
    assert message in one_line_error(capsys, *SIM, "--requests", "20", "--profile-dir", tmp_path)


def test_simulate_paper_refuses_options_it_would_ignore(capsys):
    err = one_line_error(capsys, "simulate", "--paper", "--requests", "20", "--model", "llama3-70b")
    assert (
        "drop --model" in err
        and "only --requests, --devices-file, --profile-dir, --json and the --scheduler options apply" in err
    )


def test_lower_case_device_names_are_aliases(capsys):
    """Decision: the catalog's case-insensitive lookup applies everywhere a device is named."""
    results = []
    for mix in ("4xH100", "4xh100", "4XH100"):
        argv = ["simulate", "--model", "llama3-70b", "--system", "homogeneous", "--compute", mix]
        code, out, _ = run_cli(capsys, *argv, "--trace", "azure-conv", "--requests", "50", "--json")
        assert code == 0
        results.append(json.loads(out))
    assert results[0] == results[1] == results[2] and results[0]["compute"] == "4xH100"
    code, out, _ = run_cli(capsys, *SEARCH, "--devices", "h100,h20", "--prices", "paper-2025", "--json")
    assert code == 0 and json.loads(out)["devices"] == ["H100", "H20"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--top", "0"], "--top must be >= 1"),
        (["--top", "-1"], "--top must be >= 1"),
        (["--tbt-slo-ms", "inf"], "TBT SLO must be a positive finite number of ms, got inf"),
        (["--budget-usd-per-hour", "inf"], "budget must be a positive finite number of $/hour, got inf"),
        (["--devices", ""], "--devices names no device"),
        (["--devices", ","], "--devices names no device"),
    ],
)
def test_search_bad_values(capsys, extra, message):
    assert message in one_line_error(capsys, *SEARCH, *extra)


def test_search_requests_beyond_the_trace(capsys):
    err = one_line_error(
        capsys, "search", "--model", "llama3-8b", "--trace", "azure-code", "--requests", "10000"
    )
    assert "exceeds the 8819 requests of trace azure-code" in err


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "is not UTF-8 text"),
        ("[devices.H100]\nusd_per_hour = nan\n", "usd_per_hour must be a positive number, got nan"),
        ("[devices.H100]\nusd_per_hour = inf\n", "usd_per_hour must be a positive number, got inf"),
        ("[devices.H100]\nmemory_bytes = 1e400\n", "memory_bytes must be a positive number, got inf"),
        ('[devices."../x"]\nmemory_bytes = 1e9\n', "device name '../x' must be letters, digits"),
        ('[devices.""]\nmemory_bytes = 1e9\n', "device name '' must be letters, digits"),
    ],
)
def test_devices_file_bad_contents(tmp_path, capsys, text, message):
    path = files(tmp_path)["binary"]
    if text is not None:
        path.write_text(text)
    for command in (["hardware"], SIM):
        assert message in one_line_error(capsys, *command, "--devices-file", path)


def test_models_dtype_is_case_insensitive_and_reported_in_lower_case(capsys):
    code, out, _ = run_cli(capsys, "models", "--dtype", "FP16", "--json")
    assert code == 0 and {m["dtype"] for m in json.loads(out)} == {"fp16"}
    assert "unknown dtype 'int8'; valid: fp32, fp16, bf16, fp8" in one_line_error(
        capsys, "models", "--dtype", "int8"
    )


def test_devices_file_empty_path(capsys):
    assert "device file path is empty" in one_line_error(capsys, "hardware", "--devices-file", "")


# ---- run: options and spec files ---------------------------------------------------------------------


def _spec(tmp_path: Path, text: str = SPEC) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--shard", ""], "--shard must look like I/N"),
        (["--shard", " 1/2"], "--shard must look like I/N"),
        (["--shard", "3/2"], "--shard must be I/N with 1 <= I <= N"),
        (["--run-id", ""], "run id '' must be letters, digits"),
        (["--run-id", "x" * 300], "1-200 characters"),
        (["--point", ""], "no point ''"),
        (["--report", ""], "--report is empty"),
    ],
)
def test_run_bad_options_write_nothing(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert message in one_line_error(capsys, "run", _spec(tmp_path), "--out", out, *extra)
    assert not out.exists()


def test_run_bad_output_paths_write_nothing(tmp_path, capsys):
    f, spec = files(tmp_path), _spec(tmp_path)
    assert "--out is empty" in one_line_error(capsys, "run", spec, "--out", "", "--no-report")
    err = one_line_error(capsys, "run", spec, "--out", f["below_file"], "--no-report")
    assert f"{f['file']} is a file, not a folder" in err
    out = tmp_path / "out"
    assert "is a folder; give a file name" in one_line_error(
        capsys, "run", spec, "--out", out, "--report", f["folder"]
    )
    assert "is a file, not a folder" in one_line_error(
        capsys, "run", spec, "--out", out, "--report", f["below_file"] / "r.html"
    )
    assert not out.exists()  # the report path is checked before the sweep, not after it


@pytest.mark.parametrize(
    "kind, message",
    [
        ("binary", "cannot be read as UTF-8 text"),
        ("folder", "is a folder; give a TOML file"),
        ("name", "name (it starts the run folder's name) '../up' must be letters, digits"),
        ("nan rate", "'rate_per_s' must be a finite number, got nan"),
        ("inf rate", "'rate_per_s' must be a finite number, got inf"),
        ("requests", "requests = 1000000000000 but trace azure-conv has 19366"),
        ("context", "tokens exceed the 4096 positions of bench-llama-gqa"),
    ],
)
def test_bad_spec_files_write_nothing(tmp_path, capsys, kind, message):
    f = files(tmp_path)
    poisson = SPEC + 'arrival = "poisson"\nrate_per_s = RATE\n'
    spec = {
        "binary": f["binary"],
        "folder": f["folder"],
        "name": SPEC.replace('"fuzz"', '"../up"'),
        "nan rate": poisson.replace("RATE", "nan"),
        "inf rate": poisson.replace("RATE", "inf"),
        "requests": SPEC.replace("requests = 50", f"requests = {10**12}"),
        "context": "[[measured]]\nmodel = 'bench-llama-gqa'\ncontext_lens = [4090]\nnew_tokens = 16\n",
    }[kind]
    path = spec if isinstance(spec, Path) else _spec(tmp_path, spec)
    out = tmp_path / "out"
    assert message in one_line_error(capsys, "run", path, "--out", out, "--no-report")
    assert not out.exists()


# ---- profile, gpu-check ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, message",
    [
        ("{", "config.json: not a readable config.json"),
        (b"\xff\xfe\x00garbage", "config.json: not a readable config.json"),
        ("[1, 2]", "config.json must be a JSON object, got list"),
        (
            '{"hidden_size": "big", "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 9, '
            '"intermediate_size": 8}',
            "invalid literal for int() with base 10: 'big'",
        ),
    ],
)
def test_profile_model_folder_with_a_bad_config(tmp_path, capsys, config, message):
    model = tmp_path / "model"
    model.mkdir()
    path = model / "config.json"
    path.write_bytes(config) if isinstance(config, bytes) else path.write_text(config)
    out = tmp_path / "profiles"
    assert message in one_line_error(capsys, "profile", "--model", model, "--out", out)
    assert not out.exists()


def test_profile_output_folder_checked_before_profiling(tmp_path, capsys):
    f = files(tmp_path)
    assert "--out is empty" in one_line_error(capsys, "profile", "--out", "")
    assert "is a file, not a folder" in one_line_error(capsys, "profile", "--out", f["below_file"])


@pytest.mark.parametrize(
    "out_dir, extra, message",
    [
        ("", [], "OUT_DIR is empty"),
        ("file", [], "exists and is not a folder"),
        ("below_file", [], "is a file, not a folder"),
        (
            None,
            ["--step-timeout-s", "1e300"],
            "--step-timeout-s must be a positive number of seconds, got 1e+300",
        ),
        (None, ["--budget-s", "1e300"], "(at most 2592000: 30 days)"),
    ],
)
def test_gpu_check_bad_arguments(tmp_path, capsys, monkeypatch, out_dir, extra, message):
    monkeypatch.chdir(tmp_path)  # an empty OUT_DIR must not mean the current folder
    f = files(tmp_path)
    target = tmp_path / "gc" if out_dir is None else f.get(out_dir, out_dir)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert message in one_line_error(
        capsys, "gpu-check", target, "--steps", "gemm", "--device", "cpu", *extra
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def _unfinished(out: Path, run_id: str, start: str) -> Path:
    """A run of SPEC killed after its first point: status running, one point file gone."""
    run = out / run_id
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "status": "running", "start_time": start}))
    next((run / "points").glob("*.json")).unlink()
    return run


def test_resume_with_a_run_id_continues_that_run_and_skips_unreadable_manifests(tmp_path, capsys):
    spec = _spec(tmp_path, SPEC.replace('["azure-conv"]', '["azure-conv", "azure-code"]'))  # two points
    out = tmp_path / "out"
    for run_id in ("older", "newer", "done"):
        assert run_cli(capsys, "run", spec, "--out", out, "--run-id", run_id, "--no-report")[0] == 0
    older, newer = _unfinished(out, "older", "2026-01-01"), _unfinished(out, "newer", "2026-02-01")
    for name, content in (("binary", b"\xff\x00\xfe" * 9), ("list", b"[1]")):
        (out / name).mkdir()
        (out / name / "manifest.json").write_bytes(content)  # not runs to resume: skipped
    code, _, err = run_cli(capsys, "run", spec, "--out", out, "--resume", "--run-id", "older", "--no-report")
    assert code == 0 and f"resuming {older}" in err, err
    assert json.loads((newer / "manifest.json").read_text())["status"] == "running"  # left alone
    code, _, err = run_cli(capsys, "run", spec, "--out", out, "--resume", "--no-report")
    assert code == 0 and f"resuming {newer}" in err, err
    err = one_line_error(capsys, "run", spec, "--out", out, "--resume", "--run-id", "done", "--no-report")
    assert "--resume --run-id done" in err and "is finished" in err
