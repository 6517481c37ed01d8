"""Converter microbenchmark: split a tiny decoder into n+1 slices around its n attention calls.

Skipped by default; run with `pytest tests/bench --benchmark-only --benchmark-json=FILE`.
"""

from __future__ import annotations

import pytest

from reference_impl.checkpoint import load_model
from reference_impl.converter import split_model
from tests.reference_impl.tiny_models import build_tiny_model


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """3-layer Llama-3.1-style GQA model, random weights (tests/reference_impl/tiny_models.py)."""
    return load_model(build_tiny_model("llama31-gqa", tmp_path_factory.mktemp("tiny") / "llama"))


def test_bench_split_model(benchmark, tiny_llama):
    split = benchmark(split_model, tiny_llama)
    assert len(split.slices) == tiny_llama.config.num_layers + 1
