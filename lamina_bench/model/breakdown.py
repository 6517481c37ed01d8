"""The parts of one decode iteration's time, as every iteration model reports them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class IterationBreakdown:
    """Per-iteration arrays (shape of the inputs) for B running requests and S summed context tokens."""

    time_s: np.ndarray  # wall time of one iteration; every running request gets one token
    dense_s: np.ndarray  # MTIME of one micro-batch: dense part of all layers + head
    attention_s: np.ndarray  # ATIME of one micro-batch: attention of all layers
    network_s: np.ndarray  # link time of one micro-batch over all layers (0 for homogeneous)
    compute_busy_s: np.ndarray  # time each compute device is busy during the iteration
    attention_busy_s: np.ndarray  # time each attention device is busy (homogeneous: same devices)
