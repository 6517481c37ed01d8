"""Calibration: fits on calibration files only (never a validation row), reproduces the committed file,
and recovers known constants from synthetic rows."""

import shutil

import numpy as np
import pytest

from lamina_bench.cli import main
from lamina_bench.errors import UserInputError
from lamina_bench.model.ops.calibration import load_calibration
from lamina_bench.model.ops.collectives import nccl_allreduce_s
from lamina_bench.model.ops.hardware import Hardware
from lamina_bench.validate.files import DEFAULT_DIR, load_files, read_file
from lamina_bench.validate.fit import calibrate, fit_allreduce

POISON = """id = "poison-validation"
kind = "gemm"
split = "validation"
gpu = "H100"
source = "a validation file whose rows would break any fit"
[[rows]]
m = "not a number"
"""


def test_the_fitter_refuses_a_validation_file():
    val = read_file(DEFAULT_DIR / "vidur-a100-dgx-send-recv.toml")
    with pytest.raises(
        UserInputError, match="split is 'validation'; the calibration fits calibration files only"
    ):
        calibrate([val])


def test_calibrate_never_reads_validation_rows(tmp_path):
    """A validation file with broken rows in the folder changes nothing: it is dropped before its rows."""
    for name in ("aic-h100-nccltests-allreduce", "vidur-h100-dgx-send-recv"):
        shutil.copy(DEFAULT_DIR / f"{name}.toml", tmp_path)
    files = load_files(tmp_path, split="calibration")
    (tmp_path / "poison-validation.toml").write_text(POISON)
    with pytest.raises(UserInputError, match="poison-validation"):
        load_files(tmp_path)  # read as a whole folder, the broken rows are an error ...
    assert [f.id for f in load_files(tmp_path, split="calibration")] == [f.id for f in files]  # ... not here
    out = tmp_path / "cal.json"
    assert main(["validate", "--calibrate", "--dir", str(tmp_path), "--calibration", str(out)]) == 0
    cal = load_calibration(out)
    assert set(cal.gpus["H100"]) == {"allreduce", "p2p"}
    assert cal.gpus["H100"]["p2p"] == calibrate(files, cal.date).gpus["H100"]["p2p"]


def test_committed_calibration_is_reproducible():
    committed = load_calibration()
    refit = calibrate(load_files(split="calibration"), committed.date)
    for gpu, families in committed.gpus.items():
        for family, consts in families.items():
            for name, c in consts.items():
                assert refit.gpus[gpu][family][name].value == pytest.approx(c.value, rel=1e-6, abs=1e-15), (
                    gpu,
                    family,
                    name,
                )


def test_allreduce_fit_recovers_known_constants():
    hw = Hardware("t", 1e12, 1e15, 300e9, "nvlink", None, 100, "t")
    truth = {
        "t_fixed_s": 6e-6,
        "alpha_LL_s": 0.8e-6,
        "alpha_LL128_s": 1.5e-6,
        "alpha_Simple_s": 4e-6,
        "eta_bus": 0.7,
    }
    sizes = np.array([2.0**p for p in range(9, 27)] * 3)
    world = np.repeat([2, 4, 8], 18)
    times = np.concatenate([nccl_allreduce_s(truth, hw, sizes[world == w], w) for w in (2, 4, 8)])
    fit = fit_allreduce(hw, sizes, world, ["nvlink"] * len(sizes), times, ["synthetic"])
    assert fit.median_abs_err < 1e-4
    assert fit.values["t_fixed_s"] == pytest.approx(6e-6, rel=0.02) and fit.values[
        "eta_bus"
    ] == pytest.approx(0.7, rel=0.02)
