"""Fixtures shared by the harness tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from lamina_bench.cli import main
from tests.lamina_bench.compare_helpers import SMALL_SPEC


@pytest.fixture(scope="session")
def sweep_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two runs of the same small deterministic modeled sweep, through `lamina-bench run`."""
    root = tmp_path_factory.mktemp("runs")
    spec = root / "spec.toml"
    spec.write_text(SMALL_SPEC)
    for run_id in ("a", "b"):
        assert main(["run", str(spec), "--out", str(root), "--run-id", run_id, "--no-report"]) == 0
    return root / "a", root / "b"
