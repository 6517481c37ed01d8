"""Predictions of the reference implementation's runs (a fixed batch decoding) from a local profile.

The same configuration measured with `reference_impl` and predicted here gives the model's error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lamina_bench.catalog.devices import DeviceSpec
from lamina_bench.catalog.models import ModelSpec
from lamina_bench.catalog.moe import require_dense
from lamina_bench.errors import UserInputError
from lamina_bench.model.iteration import IterationModel
from lamina_bench.model.operators import DeviceModel
from lamina_bench.model.profiles import Profile
from lamina_bench.model.system import DENSE_SYSTEMS


@dataclass(frozen=True)
class ReferenceRun:
    """A configuration of the reference engine (reference_impl) to predict: a fixed batch decoding."""

    model: ModelSpec
    system: str  # "homogeneous" | "lamina"
    batch_size: int
    context_len: int  # prompt tokens of every request
    decode_steps: int  # decode iterations measured
    dtype: str = "fp32"
    compute_workers: int = 1  # homogeneous: TP degree
    attention_workers: int = 1  # Lamina only
    pipeline_batches: int = 1  # Lamina only

    def __post_init__(self) -> None:
        require_dense(self.model, "the prediction of reference runs")
        if self.system not in DENSE_SYSTEMS:
            raise UserInputError(f"unknown system {self.system!r}; valid: {', '.join(DENSE_SYSTEMS)}")
        for name in (
            "batch_size",
            "context_len",
            "decode_steps",
            "compute_workers",
            "attention_workers",
            "pipeline_batches",
        ):
            if getattr(self, name) < 1:
                raise UserInputError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class ReferencePrediction:
    batch_size: int  # fixed: every request runs from the first decode step to the last
    throughput_tok_per_s: float
    mean_tbt_s: float
    source: str
    profile: str

    def metrics(self) -> dict[str, float]:
        """The prediction as registered metrics (results/metrics.py)."""
        return {
            "throughput_tok_per_s": self.throughput_tok_per_s,
            "tbt_mean_ms": self.mean_tbt_s * 1e3,
            "mean_batch_size": float(self.batch_size),
            "max_batch_size": float(self.batch_size),
        }


def predict_reference_run(
    profile: Profile, run: ReferenceRun, device: DeviceSpec | None = None
) -> ReferencePrediction:
    """Predict the reference engine's decode throughput and mean TBT from a profile of the same machine.

    Every worker is a process on the profiled device (e.g. "cpu" over gloo), so both pools use the
    profile; the link and all-reduce come from its `link` / `allreduce` points. The batch is fixed
    (every request has `context_len` prompt tokens and decodes `decode_steps` tokens).
    """
    dm = DeviceModel(device, profile)
    lamina = run.system == "lamina"
    model = IterationModel(
        run.model,
        run.dtype,
        run.system,
        run.compute_workers,
        run.attention_workers if lamina else run.compute_workers,
        run.pipeline_batches if lamina else 1,
        dm,
        dm,
    )
    steps = np.arange(run.decode_steps)
    times = model.time_s(run.batch_size, run.batch_size * (run.context_len + steps))
    return ReferencePrediction(
        batch_size=run.batch_size,
        throughput_tok_per_s=float(run.batch_size * run.decode_steps / times.sum()),
        mean_tbt_s=float(times.mean()),
        source=model.source,
        profile=model.profile,
    )
