"""What a measured point runs (`MeasuredConfig`), apart from the code that runs it (measure/run.py), so that
building and naming points needs neither torch nor the reference implementation."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MeasuredConfig:
    """One measured configuration: `batch_size` requests of `context_len` prompt tokens, decoding
    `new_tokens` each, on the reference implementation (homogeneous engine over `tp` processes, or the
    Lamina runtime over `compute_workers` + `attention_workers` processes)."""

    model: str  # bench model name or HF checkpoint folder
    system: str  # homogeneous | lamina
    device: str  # cpu | cuda
    dtype: str  # fp32 | fp16 | bf16
    batch_size: int
    context_len: int
    new_tokens: int
    tp: int = 1
    compute_workers: int = 1  # lamina only
    attention_workers: int = 1  # lamina only
    pipeline_batches: int = 1  # lamina only: 1 no overlap, 2 ping-pong, n rotational
    prefill_workers: int = 0  # lamina only: 0 = compute replica 0 prefills

    @property
    def lamina(self) -> bool:
        return self.system == "lamina"

    @property
    def compute_mix(self) -> str:
        """The compute processes as a device mix, e.g. "2xcpu" (homogeneous: the TP group)."""
        return f"{self.compute_workers if self.lamina else self.tp}x{self.device}"

    @property
    def attention_mix(self) -> str | None:
        return f"{self.attention_workers}x{self.device}" if self.lamina else None
