"""Shared test set-up.

Triton kernels run on CPU tensors through the interpreter when no GPU is present; the variable has to
be set before triton is first imported, so it is set here, before any test module imports a kernel.
"""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(
        reason="needs a CUDA device; none is visible (torch.cuda.is_available() is False)"
    )
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def ray_cluster():
    """A Ray cluster on 127.0.0.1 (tests/ray_support.py), started on first use and shared by the session."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'lamina-bench[ray]')")
    from tests.ray_support import start_cluster

    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.shutdown()
