"""Options of a Lamina run (`LaminaConfig`) and the checks that a run can start with them.

The engine options (device, dtype, KV blocks, batch cap, sampling, attention backend) are the
homogeneous system's, with the same defaults and checks (reference_impl/config.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from reference_impl.config import check_common_options, check_heartbeat_timeout
from reference_impl.errors import ConfigError
from reference_impl.kv_cache import DEFAULT_BLOCK_SIZE
from reference_impl.lamina.layout import COMPUTE, HeadRouting, Layout
from reference_impl.model import ModelConfig, check_tp
from reference_impl.scheduling import SchedulerConfig
from reference_impl.supervisor import HEARTBEAT_TIMEOUT_S

LAUNCHERS = ("processes", "threads", "ray")


@dataclass(frozen=True)
class LaminaConfig:
    model_dir: str
    compute_workers: int = 1  # A: R compute replicas x tp ranks each
    attention_workers: int = 1  # B: each holds a contiguous range of KV heads
    pipeline_batches: int = 1  # n: 1 none, 2 ping-pong (1 replica), n >= 3 rotational (n - 1 replicas)
    attention_split: bool = False  # attention over cached tokens starts on q; the new token merged after
    # P: prefill processes, each with the whole dense model; they prefill prompts while the compute
    # workers decode and ship each layer's KV to the attention workers (0: compute replica 0 prefills)
    prefill_workers: int = 0
    device: str = "cpu"
    dtype: str = "fp32"
    block_size: int = DEFAULT_BLOCK_SIZE
    num_blocks: int | None = None  # per attention worker; None: enough for every request at once
    max_batch_size: int | None = None
    temperature: float = 0.0
    seed: int = 0
    ignore_eos: bool = False
    attention_backend: str = "auto"  # one of attention.BACKENDS
    launcher: str = "processes"  # processes (gloo/NCCL, recovery) | threads (one process, tp 1, for tests)
    # | ray (a Ray actor per rank, placed by device type; recovery; lamina/ray_launch.py)
    comm_timeout_s: float = 300.0  # a receive waiting longer declares its peer dead
    # processes launcher: a process whose heartbeat is silent this long counts as hung and is killed
    heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S
    kill_at: tuple[int, int] | None = None  # test hook: rank 0 SIGKILLs rank r at decode step s, (r, s)
    scheduler: str = "reserve-all"  # one of scheduling.SCHEDULERS, over the attention pool's KV blocks
    max_num_seqs: int | None = None  # vllm only; None: vLLM's default
    max_num_batched_tokens: int | None = None  # vllm only; None: vLLM's default

    def __post_init__(self) -> None:
        layout = self.layout  # validates the worker counts against the pipeline mode
        _ = self.scheduler_config  # checks the policy and its caps
        if self.prefill_workers and self.scheduler != "reserve-all":
            raise ConfigError(
                f"prefill workers admit with scheduler 'reserve-all' only, got {self.scheduler!r}; "
                "drop --prefill-workers or --scheduler"
            )
        check_common_options(
            self.device, self.dtype, self.block_size, self.num_blocks, self.attention_backend
        )
        if self.launcher not in LAUNCHERS:
            raise ConfigError(f"unknown launcher {self.launcher!r}; valid: {', '.join(LAUNCHERS)}")
        if self.launcher == "threads" and layout.tp > 1:
            raise ConfigError("the threads launcher has no tensor parallelism; use launcher 'processes'")
        if self.device == "cuda" and self.launcher == "processes":
            self._check_gpu_count(layout)
        if not self.comm_timeout_s > 0:
            raise ConfigError(f"comm_timeout_s must be > 0, got {self.comm_timeout_s}")
        check_heartbeat_timeout(self.heartbeat_timeout_s)
        if self.kill_at is not None:
            self._check_kill_at(layout)

    def _check_gpu_count(self, layout: Layout) -> None:
        # One GPU per process (NCCL cannot put two ranks on one device). The spawning launcher runs every
        # rank on this machine; under torchrun, LOCAL_WORLD_SIZE of them run here.
        local = int(os.environ.get("LOCAL_WORLD_SIZE", layout.world_size))
        if local > torch.cuda.device_count():
            prefill = f" + {self.prefill_workers} prefill" if self.prefill_workers else ""
            raise ConfigError(
                f"{self.compute_workers} compute + {self.attention_workers} attention{prefill} workers need "
                f"{local} GPUs on this machine, torch sees {torch.cuda.device_count()}"
            )

    def _check_kill_at(self, layout: Layout) -> None:
        rank, step = self.kill_at
        if self.launcher not in ("processes", "ray") or self.device != "cpu":
            raise ConfigError("kill_at needs the processes or ray launcher on CPU (recovery runs over gloo)")
        if not 1 <= rank < layout.world_size or step < 0:
            raise ConfigError(
                f"kill_at rank must be in 1..{layout.world_size - 1} and step >= 0, got {self.kill_at}"
            )
        if layout.role(rank) == COMPUTE and layout.tp > 1:
            raise ConfigError(
                "a compute worker of a tensor-parallel replica cannot be replaced (see lamina/recovery.py)"
            )

    @property
    def scheduler_config(self) -> SchedulerConfig:
        return SchedulerConfig(self.scheduler, self.max_num_seqs, self.max_num_batched_tokens)

    @property
    def layout(self) -> Layout:
        return Layout(
            self.compute_workers, self.attention_workers, self.pipeline_batches, self.prefill_workers
        )

    def routing(self, model_cfg: ModelConfig) -> HeadRouting:
        """Which KV heads travel between which compute TP rank and attention worker, for this model."""
        return HeadRouting(
            model_cfg.num_heads, model_cfg.num_kv_heads, self.layout.tp, self.attention_workers
        )


def check_model(cfg: LaminaConfig, model_cfg: ModelConfig) -> None:
    """ConfigError unless the model splits over this layout (TP shards, head ranges)."""
    check_tp(model_cfg, cfg.layout.tp)
    cfg.routing(model_cfg)
