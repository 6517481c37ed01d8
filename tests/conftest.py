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
