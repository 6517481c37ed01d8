"""Which rank does what in a Lamina run, and which KV heads travel between which ranks.

Ranks: compute workers first (R replicas x tp ranks; replica r holds ranks r*tp .. r*tp+tp-1), then
the attention workers. Compute workers hold the weights (optionally tensor-parallel) and run every
dense operator; attention workers each hold the KV cache of a contiguous range of KV heads
(head-level partitioning; the G query heads of a KV head go with it). `HeadRouting` pairs every
compute TP rank's local heads with the attention workers that own them: one `Route` per overlap.
A decode step's batch is split into micro-batches (`split_batch`) that every rank runs in the order
of `pipeline.schedule`, which `check_schedule_order` accepts only if no rank can wait on another.
"""

from __future__ import annotations

from dataclasses import dataclass

from reference_impl.errors import ConfigError
from reference_impl.pipeline import compute_replica, pipeline_mode

COMPUTE = "compute"
ATTENTION = "attention"
PREFILL = "prefill"


@dataclass(frozen=True)
class Layout:
    """Which rank does what: A compute workers (R replicas x tp ranks), then B attention workers, then
    P prefill workers (P = 0: compute replica 0 prefills)."""

    compute_workers: int
    attention_workers: int
    pipeline_batches: int = 1  # n micro-batches in flight; n >= 3 runs on n - 1 compute replicas
    prefill_workers: int = 0  # P: each holds the whole dense model and prefills prompts on its own

    def __post_init__(self) -> None:
        if self.compute_workers < 1 or self.attention_workers < 1 or self.pipeline_batches < 1:
            raise ConfigError(
                f"need >= 1 compute worker, attention worker and pipeline batch, got {self.compute_workers}, "
                f"{self.attention_workers}, {self.pipeline_batches}"
            )
        if self.prefill_workers < 0:
            raise ConfigError(
                f"prefill workers must be >= 0 (0: the compute worker prefills), got {self.prefill_workers}"
            )
        if self.compute_workers % self.replicas:
            raise ConfigError(
                f"{self.pipeline_batches} pipeline batches run on {self.replicas} compute replicas, so the "
                f"compute workers ({self.compute_workers}) must be a multiple of {self.replicas}"
            )
        pipeline_mode(self.pipeline_batches, self.replicas)

    @property
    def replicas(self) -> int:
        """R: n - 1 replicas for rotational pipelining (n >= 3), else one."""
        return self.pipeline_batches - 1 if self.pipeline_batches >= 3 else 1

    @property
    def tp(self) -> int:
        """Tensor-parallel ranks per compute replica."""
        return self.compute_workers // self.replicas

    @property
    def world_size(self) -> int:
        return self.compute_workers + self.attention_workers + self.prefill_workers

    def role(self, rank: int) -> str:
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside 0..{self.world_size - 1}")
        if rank < self.compute_workers:
            return COMPUTE
        return ATTENTION if rank < self.compute_workers + self.attention_workers else PREFILL

    def compute_rank(self, replica: int, tp_rank: int) -> int:
        return replica * self.tp + tp_rank

    def replica_of(self, rank: int) -> int:
        return rank // self.tp

    def tp_rank_of(self, rank: int) -> int:
        return rank % self.tp

    def attention_rank(self, worker: int) -> int:
        return self.compute_workers + worker

    def worker_of(self, rank: int) -> int:
        return rank - self.compute_workers

    def slice_replica(self, batch: int, slice_index: int) -> int:
        """0-based replica running slice k of micro-batch j (pipeline.compute_replica is 1-based)."""
        return compute_replica(batch, slice_index, self.pipeline_batches) - 1

    def compute_ranks(self) -> range:
        return range(self.compute_workers)

    def attention_ranks(self) -> range:
        return range(self.compute_workers, self.compute_workers + self.attention_workers)

    def prefill_rank(self, worker: int) -> int:
        return self.compute_workers + self.attention_workers + worker

    def prefill_of(self, rank: int) -> int:
        return rank - self.compute_workers - self.attention_workers

    def prefill_ranks(self) -> range:
        return range(self.compute_workers + self.attention_workers, self.world_size)


def kv_head_ranges(num_kv_heads: int, num_workers: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) KV-head ranges, one per worker; sizes differ by at most one."""
    if not 1 <= num_workers <= num_kv_heads:
        raise ConfigError(
            f"head-level partitioning needs 1 <= attention workers <= KV heads, got {num_workers} workers "
            f"for {num_kv_heads} KV heads"
        )
    base, extra = divmod(num_kv_heads, num_workers)
    bounds = [0]
    for w in range(num_workers):
        bounds.append(bounds[-1] + base + (1 if w < extra else 0))
    return list(zip(bounds[:-1], bounds[1:], strict=True))


@dataclass(frozen=True)
class Route:
    """The KV heads [kv_start, kv_stop) that compute TP rank `tp_rank` exchanges with attention `worker`.

    Query heads follow their KV head (GQA): query head h reads KV head h // G. Slices index the head
    dimension of each side's local tensors (compute: its TP shard; worker: its own heads).
    """

    tp_rank: int
    worker: int
    kv_start: int  # global KV head ids
    kv_stop: int
    compute_offset: int  # first global KV head of the TP rank
    worker_offset: int  # first global KV head of the worker
    group_size: int  # G

    @property
    def num_kv_heads(self) -> int:
        return self.kv_stop - self.kv_start

    @property
    def num_q_heads(self) -> int:
        return self.num_kv_heads * self.group_size

    @property
    def compute_kv(self) -> slice:
        return slice(self.kv_start - self.compute_offset, self.kv_stop - self.compute_offset)

    @property
    def compute_q(self) -> slice:
        return slice(self.compute_kv.start * self.group_size, self.compute_kv.stop * self.group_size)

    @property
    def worker_q(self) -> slice:
        start = (self.kv_start - self.worker_offset) * self.group_size
        return slice(start, start + self.num_q_heads)


@dataclass(frozen=True)
class HeadRouting:
    """Routing table (compute TP rank local heads) x (attention worker heads): one Route per overlap.

    TP rank t holds KV heads [t Hkv/tp, (t+1) Hkv/tp); worker w the range kv_head_ranges gives it. Any
    TP size and worker count work without a special case (TP 2 with 2 workers, TP 1 with 2, TP 2 with 1).
    """

    num_heads: int
    num_kv_heads: int
    tp_size: int
    num_workers: int

    def __post_init__(self) -> None:
        if self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"query heads {self.num_heads} must be a multiple of KV heads {self.num_kv_heads}"
            )
        if self.tp_size < 1 or self.num_kv_heads % self.tp_size:
            raise ConfigError(f"KV heads {self.num_kv_heads} must split evenly over {self.tp_size} TP ranks")
        kv_head_ranges(self.num_kv_heads, self.num_workers)  # validates the worker count

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    def tp_range(self, tp_rank: int) -> tuple[int, int]:
        per_rank = self.num_kv_heads // self.tp_size
        return tp_rank * per_rank, (tp_rank + 1) * per_rank

    def worker_range(self, worker: int) -> tuple[int, int]:
        return kv_head_ranges(self.num_kv_heads, self.num_workers)[worker]

    def routes(self) -> list[Route]:
        """Every non-empty overlap, ordered by TP rank, then KV head."""
        out = []
        for t in range(self.tp_size):
            t_start, t_stop = self.tp_range(t)
            for w, (w_start, w_stop) in enumerate(kv_head_ranges(self.num_kv_heads, self.num_workers)):
                start, stop = max(t_start, w_start), min(t_stop, w_stop)
                if start < stop:
                    out.append(Route(t, w, start, stop, t_start, w_start, self.group_size))
        return out

    def from_tp_rank(self, tp_rank: int) -> list[Route]:
        """Routes of one TP rank, by KV head: together they cover its heads in order."""
        return [r for r in self.routes() if r.tp_rank == tp_rank]

    def to_worker(self, worker: int) -> list[Route]:
        """Routes of one worker, by KV head: together they cover its heads in order."""
        return sorted((r for r in self.routes() if r.worker == worker), key=lambda r: r.kv_start)


def split_batch(num_seqs: int, num_batches: int) -> tuple[int, ...]:
    """Sizes of n contiguous micro-batches of a batch: as equal as possible, larger ones first."""
    base, extra = divmod(num_seqs, num_batches)
    return tuple(base + (1 if j < extra else 0) for j in range(num_batches))


def check_schedule_order(steps: list[list]) -> None:
    """Every resource must run its steps in increasing (index, batch) order.

    Then all per-resource orders are restrictions of one total order consistent with the dependencies,
    so (a) no resource ever waits on a step that itself waits, and (b) for every sender, receiver and
    message kind, messages are sent in the order they are received (the transport matches in order).
    """
    for work in steps:
        keys = [(s.index, s.batch) for s in work]
        if keys != sorted(keys) or len(set(keys)) != len(keys):
            raise ConfigError("pipeline.schedule returned a per-resource order the runtime cannot execute")
