"""Options of an AFD run (`AFDConfig`), the layout of its ranks, and the checks a run can start with.

Ranks 0..A-1 are attention workers (rank 0 also runs the scheduler), ranks A..A+E-1 expert workers.
Expert worker w holds a contiguous range of the routed experts of every MoE layer (`expert_ranges`);
the first num_experts mod E workers hold one expert more than the others.

The engine options (device, dtype, KV blocks, batch cap, sampling, attention backend) are the
homogeneous system's, with the same defaults and checks (reference_impl/config.py); attention_workers
and pipeline_batches have Lamina's defaults (the `generate` options are shared, options.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from reference_impl.config import check_common_options, check_heartbeat_timeout
from reference_impl.errors import ConfigError
from reference_impl.kv_cache import DEFAULT_BLOCK_SIZE
from reference_impl.model import MOE_ARCHS, ModelConfig
from reference_impl.supervisor import HEARTBEAT_TIMEOUT_S

LAUNCHERS = ("processes", "threads")
MICRO_BATCHES = (1, 2)  # 1: one batch per step; 2: ping-pong (MegaScale-Infer, arXiv 2504.02263 Sec. 4)


@dataclass(frozen=True)
class AFDConfig:
    model_dir: str
    attention_workers: int = 1  # A: data parallel; each holds the KV cache of the requests it serves
    expert_workers: int = 1  # E: expert parallel; each holds a range of the routed experts
    pipeline_batches: int = 1  # micro-batches per decode step: 1, or 2 (ping-pong)
    device: str = "cpu"
    dtype: str = "fp32"
    block_size: int = DEFAULT_BLOCK_SIZE
    num_blocks: int | None = None  # per attention worker; None: enough for every request at once
    max_batch_size: int | None = None
    temperature: float = 0.0
    seed: int = 0
    ignore_eos: bool = False
    attention_backend: str = "auto"
    launcher: str = "processes"  # processes (gloo on 127.0.0.1, supervised) | threads (one process, tests)
    # processes launcher: a process whose heartbeat is silent this long counts as hung and is killed
    heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S

    def __post_init__(self) -> None:
        for name in ("attention_workers", "expert_workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                option = "--" + name.replace("_", "-")
                raise ConfigError(f"{option} must be an integer >= 1, got {value!r}")
        if self.pipeline_batches not in MICRO_BATCHES:
            raise ConfigError(
                f"--pipeline-batches {self.pipeline_batches} is not an AFD mode; valid: 1 (none), 2 (ping-pong)"
            )
        check_common_options(
            self.device, self.dtype, self.block_size, self.num_blocks, self.attention_backend
        )
        if self.device != "cpu":
            raise ConfigError(f"--system afd runs on CPU processes over gloo; got --device {self.device}")
        if self.launcher not in LAUNCHERS:
            raise ConfigError(f"unknown launcher {self.launcher!r}; valid: {', '.join(LAUNCHERS)}")
        check_heartbeat_timeout(self.heartbeat_timeout_s)

    @property
    def world_size(self) -> int:
        return self.attention_workers + self.expert_workers

    def expert_rank(self, worker: int) -> int:
        return self.attention_workers + worker

    def describe_rank(self, rank: int, num_experts: int) -> str:
        """'rank 0 (scheduler and attention worker 0)', 'rank 3 (expert worker 1, experts 2..3)', ..."""
        if rank == 0:
            return "rank 0 (scheduler and attention worker 0)"
        if rank < self.attention_workers:
            return f"rank {rank} (attention worker {rank})"
        worker = rank - self.attention_workers
        lo, hi = expert_ranges(num_experts, self.expert_workers)[worker]
        return f"rank {rank} (expert worker {worker}, experts {lo}..{hi - 1})"


def expert_ranges(num_experts: int, workers: int) -> list[tuple[int, int]]:
    """[lo, hi) of the routed experts each expert worker holds: contiguous, sizes differing by at most 1."""
    if not 1 <= workers <= num_experts:
        raise ConfigError(
            f"--expert-workers {workers} cannot share {num_experts} routed experts; valid: 1..{num_experts}"
        )
    base, extra = divmod(num_experts, workers)
    ranges, lo = [], 0
    for w in range(workers):
        hi = lo + base + (w < extra)
        ranges.append((lo, hi))
        lo = hi
    return ranges


def check_model(cfg: AFDConfig, model_cfg: ModelConfig) -> None:
    """ConfigError unless the model has routed experts and they split over cfg.expert_workers."""
    if model_cfg.moe is None:
        raise ConfigError(
            f"--system afd needs a mixture-of-experts model ({', '.join(MOE_ARCHS)}); "
            f"{cfg.model_dir} is a dense {model_cfg.arch} model"
        )
    num_experts = model_cfg.moe.num_experts
    if cfg.expert_workers > num_experts:
        raise ConfigError(
            f"--expert-workers {cfg.expert_workers} exceeds the {num_experts} routed experts of "
            f"{cfg.model_dir}; valid: 1..{num_experts}"
        )


def moe_layers(model_cfg: ModelConfig) -> list[int]:
    """The layers whose FFN is routed experts (the others keep their dense MLP on the attention side)."""
    return [i for i in range(model_cfg.num_layers) if model_cfg.moe.is_sparse(i)]
