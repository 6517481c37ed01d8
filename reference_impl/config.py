"""Options of a run: the homogeneous system's `GenerateConfig` and the checks both systems share.

`lamina.config.LaminaConfig` has the same engine options (device, dtype, KV blocks, batch cap,
sampling, attention backend) with the same defaults, checked by the same `check_common_options`;
options.py builds the `generate` command line from the two dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reference_impl.attention import BACKENDS, resolve_backend
from reference_impl.dtypes import DTYPES
from reference_impl.errors import ConfigError
from reference_impl.kv_cache import DEFAULT_BLOCK_SIZE
from reference_impl.scheduling import SchedulerConfig
from reference_impl.supervisor import HEARTBEAT_INTERVAL_S, HEARTBEAT_TIMEOUT_S

SYSTEMS = ("homogeneous",)
# The Triton paged decode kernel takes one page as one tile of keys (attention/triton_decode.py).
TRITON_BLOCK_SIZES = (16, 256)


@dataclass(frozen=True)
class GenerateConfig:
    model_dir: str
    system: str = "homogeneous"
    tp: int = 1
    device: str = "cpu"
    dtype: str = "fp32"
    block_size: int = DEFAULT_BLOCK_SIZE
    num_blocks: int | None = None  # None: enough for every request at once
    max_batch_size: int | None = None
    temperature: float = 0.0
    seed: int = 0
    ignore_eos: bool = False
    attention_backend: str = "auto"  # one of attention.BACKENDS
    heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S  # tp > 1: a rank silent this long counts as hung
    scheduler: str = "reserve-all"  # one of scheduling.SCHEDULERS
    max_num_seqs: int | None = None  # vllm only; None: vLLM's default
    max_num_batched_tokens: int | None = None  # vllm only; None: vLLM's default

    def __post_init__(self) -> None:
        check_heartbeat_timeout(self.heartbeat_timeout_s)
        _ = self.scheduler_config  # checks the policy and its caps
        if self.system not in SYSTEMS:
            raise ConfigError(f"unknown system {self.system!r}; valid: {', '.join(SYSTEMS)}")
        check_common_options(
            self.device, self.dtype, self.block_size, self.num_blocks, self.attention_backend
        )
        if self.tp < 1:
            raise ConfigError(f"--tp must be >= 1, got {self.tp}")
        if self.device == "cuda" and self.tp > torch.cuda.device_count():
            raise ConfigError(f"--tp {self.tp} needs {self.tp} GPUs, torch sees {torch.cuda.device_count()}")

    @property
    def scheduler_config(self) -> SchedulerConfig:
        return SchedulerConfig(self.scheduler, self.max_num_seqs, self.max_num_batched_tokens)


def check_common_options(
    device: str, dtype: str, block_size: int, num_blocks: int | None, attention_backend: str
) -> None:
    """ConfigError for options both systems share (GenerateConfig and lamina.LaminaConfig)."""
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {device!r}; valid: cpu, cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
    if block_size < 1 or block_size & (block_size - 1):
        raise ConfigError(f"--block-size must be a power of two, got {block_size}")
    if num_blocks is not None and num_blocks < 1:
        raise ConfigError(f"--num-blocks must be >= 1, got {num_blocks}")
    if attention_backend not in BACKENDS:
        raise ConfigError(f"unknown attention backend {attention_backend!r}; valid: {', '.join(BACKENDS)}")
    low, high = TRITON_BLOCK_SIZES
    if resolve_backend(attention_backend, torch.device(device)) == "triton" and not low <= block_size <= high:
        raise ConfigError(
            f"the triton attention backend needs --block-size in {low}..{high}, got {block_size} "
            "(or choose the torch backend)"
        )


def check_heartbeat_timeout(heartbeat_timeout_s: float) -> None:
    """ConfigError unless the heartbeat timeout spans at least 4 heartbeats (one late beat is no hang)."""
    low = 4 * HEARTBEAT_INTERVAL_S
    if not heartbeat_timeout_s >= low:
        raise ConfigError(f"--heartbeat-timeout must be >= {low:g} s, got {heartbeat_timeout_s:g}")
