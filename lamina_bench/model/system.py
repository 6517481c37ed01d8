"""A system on a device mix: homogeneous (tensor parallel), Lamina (compute pool + attention pool) or, for
mixture-of-experts models, AFD (attention pool + expert pool; model/moe_iteration.py).

`SystemConfig` checks what can run at all (KV heads per attention device, replicas of the compute pool,
heads divisible by the TP degree) and names its serving scheduler (model/scheduler.py); `memory_plan`
says what the weights take and how many KV tokens fit: after a 10% workspace reserve (reserve-all), or
as vLLM sizes its KV cache (vllm: memory.vllm_pool_memory).
"""

from __future__ import annotations

from dataclasses import dataclass

from lamina_bench.catalog.devices import DeviceMix
from lamina_bench.catalog.models import DTYPE_BYTES, ModelSpec
from lamina_bench.catalog.moe import is_moe
from lamina_bench.errors import UserInputError
from lamina_bench.model.memory import PoolMemory, pool_memory, vllm_pool_memory
from lamina_bench.model.moe_memory import moe_pools
from lamina_bench.model.roofline import WORKSPACE_RESERVE_FRACTION
from lamina_bench.model.scheduler import RESERVE_ALL, Scheduler

SYSTEMS = ("homogeneous", "lamina", "afd")
DENSE_SYSTEMS = ("homogeneous", "lamina")  # what the reference runtime runs and the measured sweeps take
DEFAULT_LAMINA_PIPELINE_BATCHES = 2  # ping-pong, the paper's setting for one compute replica
DEFAULT_AFD_PIPELINE_BATCHES = 2  # ping-pong between the attention and expert pools (MegaScale-Infer)


@dataclass(frozen=True)
class SystemConfig:
    """One system on one device mix. `pipeline_batches` None = 1 (homogeneous) or 2 (Lamina, AFD).

    AFD (MoE models only): `attention` is the attention pool, `compute` the expert pool. `routing_skew`
    (MoE only, >= 1) scales the most loaded expert device's share of token copies (ops/moe.py).
    """

    system: str
    model: ModelSpec
    compute: DeviceMix
    attention: DeviceMix | None = None
    dtype: str = "fp16"
    pipeline_batches: int | None = None
    max_batch_size: int | None = None
    reserve_fraction: float = WORKSPACE_RESERVE_FRACTION
    scheduler: Scheduler = RESERVE_ALL
    routing_skew: float = 1.0

    def __post_init__(self) -> None:
        if self.system not in SYSTEMS:
            raise UserInputError(f"unknown system {self.system!r}; valid: {', '.join(SYSTEMS)}")
        if is_moe(self.model):
            check_moe_config(self)
        elif self.system == "afd":
            raise UserInputError(
                f"AFD splits attention from the routed experts: {self.model.name} is dense; "
                "use a mixture-of-experts model (`lamina-bench models`) or --system homogeneous | lamina"
            )
        elif self.routing_skew != 1.0:
            raise UserInputError(
                f"routing skew applies to mixture-of-experts models; {self.model.name} is dense"
            )
        if self.dtype not in DTYPE_BYTES:
            raise UserInputError(f"unknown dtype {self.dtype!r}; valid: {', '.join(DTYPE_BYTES)}")
        if self.max_batch_size is not None and self.max_batch_size < 1:
            raise UserInputError(f"max batch size must be >= 1, got {self.max_batch_size}")
        if not 0.0 <= self.reserve_fraction < 1.0:
            raise UserInputError(f"workspace reserve fraction must be in [0, 1), got {self.reserve_fraction}")
        if self.system == "homogeneous":
            if self.attention is not None:
                raise UserInputError("a homogeneous system has no attention pool; drop --attention")
            if self.pipeline_batches not in (None, 1):
                raise UserInputError(
                    "pipeline batches apply to Lamina and AFD only (homogeneous runs one batch)"
                )
        elif self.system == "lamina":
            if self.attention is None:
                raise UserInputError("a Lamina system needs an attention pool, e.g. --attention 4xH20")
            if self.batches < 1:
                raise UserInputError(f"pipeline batches must be >= 1, got {self.pipeline_batches}")
            if self.attention.count > self.model.num_kv_heads and self.model.mla is None:
                raise UserInputError(
                    f"KV is partitioned across attention devices by KV head: {self.model.name} has "
                    f"{self.model.num_kv_heads} KV heads, so at most {self.model.num_kv_heads} attention devices, "
                    f"got {self.attention}"
                )
            if self.compute.count % self.replicas:
                raise UserInputError(
                    f"{self.batches} pipelined batches need {self.replicas} compute replicas; "
                    f"{self.compute} does not split into {self.replicas} equal replicas"
                )
        if self.model.num_heads % self.tp and not is_moe(self.model):
            raise UserInputError(
                f"tensor parallelism over {self.tp} devices needs num_heads ({self.model.num_heads}) "
                f"of {self.model.name} to be a multiple of {self.tp}"
            )

    @property
    def batches(self) -> int:
        if self.pipeline_batches is not None:
            return self.pipeline_batches
        if self.system == "afd":
            return DEFAULT_AFD_PIPELINE_BATCHES
        return DEFAULT_LAMINA_PIPELINE_BATCHES if self.system == "lamina" else 1

    @property
    def replicas(self) -> int:
        """Compute replicas: n - 1 for rotational pipelining (n >= 2), else one."""
        return max(1, self.batches - 1) if self.system == "lamina" else 1

    @property
    def tp(self) -> int:
        """Tensor-parallel degree of one compute replica."""
        return self.compute.count // self.replicas

    def label(self) -> str:
        if self.system == "homogeneous":
            return f"homogeneous {self.compute}"
        if self.system == "afd":
            return f"afd attention {self.attention} + experts {self.compute} m={self.batches}"
        return f"lamina {self.compute}+{self.attention} n={self.batches}"


def check_moe_config(config: SystemConfig) -> None:
    """UserInputError unless a MoE model can run `config`: the reserve-all scheduler (the paged vLLM
    replay models dense models only), a routing skew >= 1, and for AFD both pools."""
    if config.scheduler.paged:
        raise UserInputError(
            f"{config.model.name} is a mixture-of-experts model: the {config.scheduler.name} scheduler "
            "models dense models only; use --scheduler reserve-all"
        )
    if not config.routing_skew >= 1.0:
        raise UserInputError(f"routing skew must be >= 1 (1 = uniform routing), got {config.routing_skew}")
    if config.system == "afd":
        if config.attention is None:
            raise UserInputError("an AFD system needs an attention pool and an expert pool, e.g. "
                                 "--attention 4xH20 --experts 8xH100")  # fmt: skip
        if config.batches < 1:
            raise UserInputError(f"pipeline batches must be >= 1, got {config.pipeline_batches}")


@dataclass(frozen=True)
class MemoryPlan:
    compute: PoolMemory
    attention: PoolMemory | None

    @property
    def kv_capacity_tokens(self) -> int:
        return (self.attention or self.compute).kv_capacity_tokens


def memory_plan(config: SystemConfig) -> MemoryPlan:
    """Weights (sharded over one replica), workspace reserve and KV capacity of each pool."""
    if is_moe(config.model):
        return MemoryPlan(*moe_pools(config))
    if config.scheduler.paged:
        return _vllm_plan(config)
    spec, c = config.model, config.compute
    if config.system == "homogeneous":
        pool = pool_memory(
            spec, c.device, c.count, config.dtype, c.count, True, config.reserve_fraction, str(c)
        )
        return MemoryPlan(pool, None)
    label = f"{c}" if config.replicas == 1 else f"{c} as {config.replicas} replicas of {config.tp}"
    compute = pool_memory(
        spec, c.device, c.count, config.dtype, config.tp, False, config.reserve_fraction, label
    )
    a = config.attention
    attention = pool_memory(
        spec, a.device, a.count, config.dtype, None, True, config.reserve_fraction, str(a)
    )
    return MemoryPlan(compute, attention)


def _vllm_plan(config: SystemConfig) -> MemoryPlan:
    """vLLM's budget (memory.vllm_pool_memory) on every pool; Lamina's compute pool holds no KV."""
    spec, c, sched = config.model, config.compute, config.scheduler
    knobs = (sched.gpu_memory_utilization, sched.max_num_batched_tokens, sched.block_size)
    if config.system == "homogeneous":
        return MemoryPlan(
            vllm_pool_memory(spec, c.device, c.count, config.dtype, c.count, True, *knobs, str(c)), None
        )
    label = f"{c}" if config.replicas == 1 else f"{c} as {config.replicas} replicas of {config.tp}"
    compute = vllm_pool_memory(spec, c.device, c.count, config.dtype, config.tp, False, *knobs, label)
    a = config.attention
    attention = vllm_pool_memory(spec, a.device, a.count, config.dtype, None, True, *knobs, str(a))
    return MemoryPlan(compute, attention)
