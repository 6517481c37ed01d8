"""Lamina workers: compute workers run the dense slices, attention workers own KV heads and run attention.

Model-attention disaggregation (Lamina, arXiv 2405.01814 v2): compute workers hold the weights
(optionally tensor-parallel) and run every dense operator; attention workers hold the KV cache of a
contiguous range of KV heads (head-level partitioning; the G query heads of a KV head go with it) and
run attention for them. Per layer of a decode step, the compute side sends q, k, v of each head range
to its attention worker ("qkv") and gets the attention output back ("attn_out"). New requests are
prefilled on the compute side (causal attention over the prompt, locally) and the prompt's KV is
shipped layer by layer to the owning attention workers ("prompt_kv").

Ranks: compute workers first (R replicas x tp ranks; replica r holds ranks r*tp .. r*tp+tp-1), then
the attention workers. Compute rank 0 runs the scheduler (lamina.LaminaEngine: engine.Engine over a
LaminaExecutor) and sends every other worker a `Plan` per step, so all of them execute the same plan.

Attention split (option): q and the new token's k/v travel as two messages ("q", "new_kv"); the
attention worker starts on the cached tokens as soon as q is in, then writes the new k/v and merges
the new token's part with the log-sum-exp merge (exact: the two key sets are disjoint).

Pipelining: a decode step splits the batch into n micro-batches and runs them through the converter's
slices in the order of `pipeline.schedule` (n = 1: no overlap; n = 2: ping-pong on one replica;
n >= 3: rotational, slice k of micro-batch j on replica ((j + k) mod (n - 1)) + 1, the live values
crossing between replicas as "live" messages). Every step fills and drains the pipeline (an iteration
barrier): the next step's plan depends on this step's sampled tokens.

Failures: a transport call that raises (peer gone, timeout) marks the peer dead for the rest of the
epoch; the step then finishes in a degraded way so that no survivor blocks: a missing attention
output is replaced by zeros and the micro-batch marked poisoned, a missing input that cannot be
replaced (live values of a dead compute replica) travels on as an empty message. Rank 0 learns of
every failure (statuses), has the dead workers replaced and the step redone (see lamina.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import IntEnum

import torch

from reference_impl.attention import decode_attention, merge_attention, prefill_attention_ref
from reference_impl.attention.context import PagedAttention
from reference_impl.errors import ConfigError
from reference_impl.kv_cache import BatchMetadata, PagedKVCache
from reference_impl.pipeline import ATTENTION_POOL, compute_replica, pipeline_mode, schedule

COMPUTE = "compute"
ATTENTION = "attention"

# Message kinds (the transport accounts bytes per kind). The first four are the compute <-> attention
# link of decode that the paper's (2 + 2/G) e d per token per layer describes.
DECODE_LINK_KINDS = ("qkv", "q", "new_kv", "attn_out")
KINDS = (*DECODE_LINK_KINDS, "prompt_kv", "live", "hidden", "ctrl", "status", "ack", "stats")


# ---- layout and head routing ---------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Which rank does what: A compute workers (R replicas x tp ranks), then B attention workers."""

    compute_workers: int
    attention_workers: int
    pipeline_batches: int = 1  # n micro-batches in flight; n >= 3 runs on n - 1 compute replicas

    def __post_init__(self) -> None:
        if self.compute_workers < 1 or self.attention_workers < 1 or self.pipeline_batches < 1:
            raise ConfigError(
                f"need >= 1 compute worker, attention worker and pipeline batch, got {self.compute_workers}, "
                f"{self.attention_workers}, {self.pipeline_batches}"
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
        return self.compute_workers + self.attention_workers

    def role(self, rank: int) -> str:
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside 0..{self.world_size - 1}")
        return COMPUTE if rank < self.compute_workers else ATTENTION

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
        return range(self.compute_workers, self.world_size)


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


# ---- step plans (the control messages) -----------------------------------------------------------


class Op(IntEnum):
    STEP = 1  # one forward: a prefill or a decode step
    REBUILD = 2  # refill replaced attention workers' KV (reservations + a prefill of the histories)
    REGROUP = 3  # a new epoch: join a fresh process group that includes the replacements
    STOP = 4  # send your statistics to rank 0 and exit


class Phase(IntEnum):
    PREFILL = 1
    DECODE = 2


_PLAN_HEAD = 11  # op, step_id, phase, redo, epoch and six section lengths


@dataclass(frozen=True)
class Plan:
    """What every worker does next; rank 0 sends one to every other rank (kind "ctrl")."""

    op: Op
    step_id: int = 0
    phase: Phase = Phase.PREFILL
    redo: bool = False  # a repeat of step_id after a recovery: reservations and frees are applied already
    epoch: int = 0  # REGROUP: the epoch to join
    seq_ids: tuple[int, ...] = ()
    query_lens: tuple[int, ...] = ()  # new tokens per sequence
    positions: tuple[int, ...] = ()  # position of each sequence's first new token (tokens already cached)
    micro_batches: tuple[int, ...] = ()  # DECODE: sizes of the contiguous micro-batches (sum = len(seq_ids))
    reserves: tuple[tuple[int, int], ...] = ()  # (seq_id, tokens) made since the previous step
    frees: tuple[int, ...] = ()  # sequences freed since the previous step (applied before reserves)
    targets: tuple[int, ...] = ()  # REBUILD: attention workers to refill; REGROUP: ranks replaced
    tokens: tuple[int, ...] = ()  # input ids, sequences concatenated; only compute workers get them

    def __post_init__(self) -> None:
        n = len(self.seq_ids)
        if len(self.query_lens) != n or len(self.positions) != n:
            raise ValueError(f"plan needs one query_len and position per sequence, got {n} sequences")
        if self.micro_batches and sum(self.micro_batches) != n:
            raise ValueError(f"micro-batch sizes {self.micro_batches} do not add up to {n} sequences")
        if self.tokens and len(self.tokens) != sum(self.query_lens):
            raise ValueError(f"plan carries {len(self.tokens)} tokens for {sum(self.query_lens)} new tokens")

    @property
    def num_tokens(self) -> int:
        return sum(self.query_lens)

    def micro_batch_bounds(self) -> list[tuple[int, int]]:
        """[start, stop) of each micro-batch within the step's sequences."""
        bounds, start = [], 0
        for size in self.micro_batches:
            bounds.append((start, start + size))
            start += size
        return bounds

    def for_attention(self) -> Plan:
        """The plan an attention worker gets: without the token ids it does not need."""
        return replace(self, tokens=())

    def encode(self) -> torch.Tensor:
        """One int64 tensor: a head of _PLAN_HEAD values, then the sections in field order."""
        sections = [
            self.seq_ids,
            self.query_lens,
            self.positions,
            self.micro_batches,
            [v for pair in self.reserves for v in pair],
            self.frees,
            self.targets,
            self.tokens,
        ]
        head = [int(self.op), self.step_id, int(self.phase), int(self.redo), self.epoch]
        head += [len(self.seq_ids), len(self.micro_batches), len(self.reserves), len(self.frees)]
        head += [len(self.targets), len(self.tokens)]
        return torch.tensor(head + [v for s in sections for v in s], dtype=torch.int64)

    @classmethod
    def decode(cls, tensor: torch.Tensor) -> Plan:
        values = tensor.tolist()
        op, step_id, phase, redo, epoch, n_seq, n_micro, n_res, n_free, n_targets, n_tok = values[:_PLAN_HEAD]
        lengths = [n_seq, n_seq, n_seq, n_micro, 2 * n_res, n_free, n_targets, n_tok]
        if len(values) != _PLAN_HEAD + sum(lengths):
            raise ValueError(f"plan of {len(values)} values does not match its head {values[:_PLAN_HEAD]}")
        parts, pos = [], _PLAN_HEAD
        for n in lengths:
            parts.append(tuple(values[pos : pos + n]))
            pos += n
        seq_ids, query_lens, positions, micro, reserves, frees, targets, tokens = parts
        return cls(
            op=Op(op),
            step_id=step_id,
            phase=Phase(phase),
            redo=bool(redo),
            epoch=epoch,
            seq_ids=seq_ids,
            query_lens=query_lens,
            positions=positions,
            micro_batches=micro,
            reserves=tuple(zip(reserves[0::2], reserves[1::2], strict=True)),
            frees=frees,
            targets=targets,
            tokens=tokens,
        )


# ---- time accounting -----------------------------------------------------------------------------

CATEGORIES = ("dense", "attention", "network", "idle", "other")


@dataclass(frozen=True)
class StepTimes:
    """Seconds one worker spent per category between the end of its previous step and the end of this one.

    dense: model slices (tensor-parallel all-reduces included); attention: attention and KV writes;
    network: in send calls and waiting for sends to finish; idle: blocked waiting for a message (which
    includes that message's transfer time, small on one machine next to the peer's compute); other:
    the rest (planning, bookkeeping; on rank 0 also the scheduler and sampling).

    On CUDA, kernels and NCCL work run asynchronously, so a host timer alone measures launches: the
    WorkerClock of a CUDA worker waits for the device's current stream at the end of every section,
    so the section is charged for the work it launched (the tensor-parallel all-reduces and the sends
    that flush waited for included). On CPU everything is synchronous and nothing is added.
    """

    step_id: int
    kind: str  # "prefill" | "decode" | "rebuild" | "regroup" | "stop"
    dense_s: float
    attention_s: float
    network_s: float
    idle_s: float
    other_s: float

    @property
    def wall_s(self) -> float:
        return self.dense_s + self.attention_s + self.network_s + self.idle_s + self.other_s


class WorkerClock:
    """Attributes wall time to the innermost open section (nested sections do not double count).

    device: the worker's device; on CUDA every section ends by waiting for its current stream.
    """

    def __init__(
        self, now: Callable[[], float] = time.perf_counter, device: torch.device | str | None = None
    ) -> None:
        self._now = now  # seconds; injectable for tests
        # The current stream, not torch.cuda.synchronize(device): a device-wide wait would also wait
        # for NCCL's own streams, turning every asynchronous send into one that waits for its receiver,
        # and two workers sending to each other (ping-pong) would then wait for each other forever.
        # The compute stream holds the dense and attention kernels and, through Work.wait, the
        # all-reduces and the sends a flush waits for.
        device = None if device is None else torch.device(device)
        self._cuda_device = device if device is not None and device.type == "cuda" else None
        self._totals = dict.fromkeys(CATEGORIES, 0.0)
        self._stack = ["other"]
        self._last = now()
        self._at_last_mark = dict(self._totals)
        self.steps: list[StepTimes] = []

    def _charge(self) -> None:
        now = self._now()
        self._totals[self._stack[-1]] += now - self._last
        self._last = now

    @contextmanager
    def section(self, category: str) -> Iterator[None]:
        if category not in CATEGORIES:
            raise ValueError(f"unknown time category {category!r}; valid: {', '.join(CATEGORIES)}")
        self._charge()
        self._stack.append(category)
        try:
            yield
            if self._cuda_device is not None:  # charge the GPU work this section launched to it
                torch.cuda.current_stream(self._cuda_device).synchronize()
        finally:
            self._charge()
            self._stack.pop()

    def totals(self) -> dict[str, float]:
        self._charge()
        return dict(self._totals)

    def mark_step(self, step_id: int, kind: str) -> StepTimes:
        """Closes a step: the time since the previous mark, by category."""
        now = self.totals()
        delta = {c: now[c] - self._at_last_mark[c] for c in CATEGORIES}
        self._at_last_mark = now
        step = StepTimes(step_id, kind, *(delta[c] for c in CATEGORIES))
        self.steps.append(step)
        return step


# ---- messaging with failure detection ------------------------------------------------------------

_LINK_ERRORS = (RuntimeError, TimeoutError, ConnectionError)  # what gloo/NCCL and the transport raise


class _PendingRecv:
    def __init__(self, links: Links, src: int, handle) -> None:
        self._links, self._src, self._handle = links, src, handle

    def wait(self) -> list[torch.Tensor] | None:
        if self._handle is None:
            return None
        return self._links._finish_recv(self._src, lambda: self._handle.wait(self._links.timeout_s))


class Links:
    """One worker's transport calls in one epoch, timed, with failure detection.

    A send or receive that raises marks the peer dead: later calls to it do nothing (send) or return
    None (receive), so a step always runs to its end. An empty message (no tensors) is the poison a
    worker sends in place of an output it could not compute; receiving one also returns None.
    """

    def __init__(self, transport, clock: WorkerClock, timeout_s: float | None = None) -> None:
        self.transport = transport
        self.clock = clock
        self.timeout_s = timeout_s  # None: the transport's default
        self.dead: set[int] = set()
        self._pending: list[tuple[int, object]] = []

    def send(self, dst: int, kind: str, tensors: Sequence[torch.Tensor]) -> None:
        if dst in self.dead:
            return
        with self.clock.section("network"):
            try:
                self._pending.append((dst, self.transport.send(dst, kind, list(tensors))))
            except _LINK_ERRORS:
                self.dead.add(dst)

    def irecv(self, src: int, kind: str) -> _PendingRecv:
        if src in self.dead:
            return _PendingRecv(self, src, None)
        try:
            return _PendingRecv(self, src, self.transport.irecv(src, kind))
        except _LINK_ERRORS:
            self.dead.add(src)
            return _PendingRecv(self, src, None)

    def recv(self, src: int, kind: str, timeout_s: float | None = None) -> list[torch.Tensor] | None:
        if src in self.dead:
            return None
        return self._finish_recv(src, lambda: self.transport.recv(src, kind, timeout_s or self.timeout_s))

    def _finish_recv(self, src: int, wait) -> list[torch.Tensor] | None:
        if src in self.dead:
            return None
        with self.clock.section("idle"):
            try:
                tensors = wait()
            except _LINK_ERRORS:
                self.dead.add(src)
                return None
        return tensors or None

    def flush(self) -> None:
        """Waits until every send has completed (a failed one marks its peer dead)."""
        with self.clock.section("network"):
            for dst, handle in self._pending:
                try:
                    handle.wait()
                except _LINK_ERRORS:
                    self.dead.add(dst)
            self._pending = []


def status_tensor(poisoned: bool, dead: set[int]) -> torch.Tensor:
    """A compute worker's end-of-step report to rank 0: [poisoned, dead ranks...]."""
    return torch.tensor([int(poisoned), *sorted(dead)], dtype=torch.int64)


# ---- compute worker ------------------------------------------------------------------------------


class _PromptAttention:
    """Attention context of a prefill on the compute side.

    Per layer: the prompt's k/v of each routed head range go to their attention worker (sent first, so
    the transfer overlaps this layer's attention and the next layer), then causal attention over each
    prompt runs locally. Prompts start at position 0 (nothing of them is cached yet).
    """

    def __init__(self, query_lens: Sequence[int], routes: list[Route], dst_ranks: list[int], links: Links):
        self.query_lens = list(query_lens)
        self.routes = routes
        self.dst_ranks = dst_ranks
        self.links = links

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int) -> torch.Tensor:
        for route, dst in zip(self.routes, self.dst_ranks, strict=True):
            self.links.send(dst, "prompt_kv", [k[:, route.compute_kv], v[:, route.compute_kv]])
        with self.links.clock.section("attention"):
            scale = q.shape[-1] ** -0.5
            outs, start = [], 0
            for n in self.query_lens:
                sl = slice(start, start + n)
                outs.append(prefill_attention_ref(q[sl], k[sl], v[sl], scale)[0])  # (n, Hq_local, D)
                start += n
            return torch.cat(outs)  # (T, Hq_local, D)


@dataclass
class StepOutput:
    """What a compute worker's step produced for rank 0: last-token hidden states per micro-batch."""

    hidden: dict[int, torch.Tensor | None] = field(default_factory=dict)  # micro-batch -> (b, d) or None
    poisoned: bool = False  # an attention output was missing and replaced by zeros


class ComputeWorker:
    """Holds the weights (one TP shard of one replica) and runs prefills and decode slices."""

    def __init__(
        self,
        rank: int,
        layout: Layout,
        routing: HeadRouting,
        model,
        split_model,
        split_attention: bool = False,
    ) -> None:
        self.rank = rank
        self.split_attention = split_attention  # send q and the new token's k/v as two messages
        self.layout = layout
        self.replica = layout.replica_of(rank)
        self.tp_rank = layout.tp_rank_of(rank)
        self.model = model
        self.split = split_model
        self.routes = routing.from_tp_rank(self.tp_rank)
        self.num_layers = model.config.num_layers
        self.head_dim = model.config.head_dim
        steps = schedule(self.num_layers, layout.pipeline_batches, layout.replicas)
        check_schedule_order(steps)
        self.tasks = steps[self.replica + 1]  # this replica's dense slices, in order
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype

    @torch.inference_mode()
    def execute(self, plan: Plan, links: Links) -> StepOutput:
        if plan.op == Op.REBUILD:
            return self._prefill(plan, links, workers=set(plan.targets))
        if plan.phase == Phase.PREFILL:
            return self._prefill(plan, links, workers=set(range(self.layout.attention_workers)))
        return self._decode(plan, links)

    def _prefill(self, plan: Plan, links: Links, workers: set[int]) -> StepOutput:
        """Replica 0 prefills (and ships the KV to `workers`); other replicas have nothing to do."""
        if self.replica != 0 or not plan.seq_ids:
            return StepOutput()
        routes = [r for r in self.routes if r.worker in workers]
        dsts = [self.layout.attention_rank(r.worker) for r in routes]
        ids = torch.tensor(plan.tokens, dtype=torch.long, device=self.device)  # (T,)
        positions = torch.cat(
            [torch.arange(p, p + n) for p, n in zip(plan.positions, plan.query_lens, strict=True)]
        ).to(self.device)  # (T,)
        ctx = _PromptAttention(plan.query_lens, routes, dsts, links)
        with links.clock.section("dense"):
            hidden = self.model(ids, positions, ctx)  # (T, d)
        # (B,) index of each sequence's last token
        last = torch.tensor(plan.query_lens, device=self.device).cumsum(0) - 1
        return StepOutput(hidden={0: hidden[last]})

    def _decode(self, plan: Plan, links: Links) -> StepOutput:
        out = StepOutput()
        ids = torch.tensor(plan.tokens, dtype=torch.long, device=self.device)  # (B,) one token per sequence
        positions = torch.tensor(plan.positions, dtype=torch.long, device=self.device)  # (B,)
        bounds = plan.micro_batch_bounds()
        kept: dict[int, list[torch.Tensor] | None] = {}  # micro-batch -> live values staying on this replica
        for task in self.tasks:
            j, k = task.batch, task.index
            start, stop = bounds[j]
            if start == stop:
                continue  # an empty micro-batch: nobody sends or expects anything for it
            if k == 0:
                with links.clock.section("dense"):
                    result = self.split.slices[0](ids[start:stop], positions[start:stop])
            else:
                live = self._take_live(j, k, kept, links)
                attn = self._gather_attention(stop - start, links, out)  # layer k - 1's output
                result = None
                if live is not None:
                    with links.clock.section("dense"):
                        result = self.split.slices[k](*live, attn)
            self._emit(j, k, result, kept, links, out)
        return out

    def _take_live(self, j: int, k: int, kept: dict, links: Links) -> list[torch.Tensor] | None:
        """Live values entering slice k of micro-batch j: kept here, or sent by the replica that ran k-1."""
        prev = self.layout.slice_replica(j, k - 1)
        if prev == self.replica:
            return kept.pop(j)
        live = links.recv(self.layout.compute_rank(prev, self.tp_rank), "live")
        if live is None and self.layout.tp > 1:
            # the TP peers of this replica got theirs and will enter the slice's all-reduce: no way to
            # keep them in step without the inputs
            raise RuntimeError(f"rank {self.rank}: live values from compute replica {prev} are missing")
        return live

    def _gather_attention(self, batch: int, links: Links, out: StepOutput) -> torch.Tensor:
        """The next attention output (b, Hq_local, D) of this TP rank's heads, assembled from its routes.

        Each worker sends its outputs in schedule order, so the next one from each is the one wanted.
        """
        parts = []
        for route in self.routes:
            got = links.recv(self.layout.attention_rank(route.worker), "attn_out")
            if got is None:  # the worker died: zeros keep the TP peers in step; the step will be redone
                out.poisoned = True
                shape = (batch, route.num_q_heads, self.head_dim)
                got = [torch.zeros(shape, dtype=self.dtype, device=self.device)]
            parts.append(got[0])
        return torch.cat(parts, dim=1)

    def _emit(self, j: int, k: int, result, kept: dict, links: Links, out: StepOutput) -> None:
        """Send what slice k of micro-batch j produced: q/k/v and live values, or the final hidden."""
        if k == self.num_layers:
            if self.rank == 0:
                out.hidden[j] = result
            elif self.tp_rank == 0:
                links.send(0, "hidden", [] if result is None else [result])
            return
        if result is None:
            live = None
            for route in self.routes:
                for kind in self._qkv_kinds():
                    links.send(self.layout.attention_rank(route.worker), kind, [])
        else:
            *live, q, key, value = result
            for route in self.routes:
                dst = self.layout.attention_rank(route.worker)
                qs, kvs = q[:, route.compute_q], (key[:, route.compute_kv], value[:, route.compute_kv])
                if self.split_attention:
                    links.send(dst, "q", [qs])
                    links.send(dst, "new_kv", list(kvs))
                else:
                    links.send(dst, "qkv", [qs, *kvs])
        nxt = self.layout.slice_replica(j, k + 1)
        if nxt == self.replica:
            kept[j] = live
        else:
            links.send(self.layout.compute_rank(nxt, self.tp_rank), "live", [] if live is None else live)

    def _qkv_kinds(self) -> tuple[str, ...]:
        return ("q", "new_kv") if self.split_attention else ("qkv",)


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


# ---- attention worker ----------------------------------------------------------------------------


def new_token_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of each query (B, Hq, D) over its own new key/value (B, Hkv, D) alone.

    Softmax over one key is 1, so the output is v (per query head) and the log-sum-exp is the score.
    Returns out (B, Hq, D) fp32 and lse (B, Hq) fp32, ready for merge_attention.
    """
    group = q.shape[1] // k.shape[1]
    k_rep = k.float().repeat_interleave(group, dim=1)  # (B, Hq, D): query head h reads KV head h // G
    lse = (q.float() * k_rep).sum(-1) * scale  # (B, Hq)
    return v.float().repeat_interleave(group, dim=1), lse


class AttentionWorker:
    """Owns the KV cache of a contiguous range of KV heads and runs attention for those heads.

    Its cache has the same number of blocks as every other attention worker's, so the compute side's
    admission by blocks is the pool's capacity.
    """

    def __init__(
        self,
        rank: int,
        layout: Layout,
        routing: HeadRouting,
        num_layers: int,
        head_dim: int,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device | str,
        backend: str = "auto",
        split_attention: bool = False,
    ) -> None:
        self.rank = rank
        self.layout = layout
        self.worker = layout.worker_of(rank)
        self.routes = routing.to_worker(self.worker)
        start, stop = routing.worker_range(self.worker)
        self.cache = PagedKVCache(num_layers, stop - start, head_dim, num_blocks, block_size, dtype, device)
        self.num_layers = num_layers
        self.backend = backend
        self.split_attention = split_attention
        self.tasks = schedule(num_layers, layout.pipeline_batches, layout.replicas)[ATTENTION_POOL]
        check_schedule_order([self.tasks])
        self._step_id: int | None = None  # the last step whose reservations and slots were applied
        self._metas: list[BatchMetadata | None] = []

    @torch.inference_mode()
    def execute(self, plan: Plan, links: Links) -> None:
        if plan.op == Op.REBUILD:
            if self.worker in plan.targets:
                self._rebuild(plan, links)
            return
        metas = self._step_metadata(plan)
        if plan.phase == Phase.PREFILL:
            self._receive_prompt_kv(metas[0], links)
        else:
            self._decode(plan, metas, links)

    def _rebuild(self, plan: Plan, links: Links) -> None:
        """A fresh worker: every running sequence's reservation, then the KV of its tokens so far."""
        for seq_id, num_tokens in plan.reserves:
            self.cache.reserve(seq_id, num_tokens)
        if plan.seq_ids:
            self._receive_prompt_kv(self.cache.prepare(list(plan.seq_ids), list(plan.query_lens)), links)

    def _step_metadata(self, plan: Plan) -> list[BatchMetadata | None]:
        """Slots of this step, one metadata per micro-batch (one for a prefill).

        A redo reuses the metadata of the failed attempt when this worker saw it (its lengths advanced
        already; the redo rewrites the same slots); a replacement prepares afresh.
        """
        if plan.redo and self._step_id == plan.step_id:
            return self._metas
        if not plan.redo:
            for seq_id in plan.frees:
                self.cache.free(seq_id)
            for seq_id, num_tokens in plan.reserves:
                self.cache.reserve(seq_id, num_tokens)
        bounds = [(0, len(plan.seq_ids))] if plan.phase == Phase.PREFILL else plan.micro_batch_bounds()
        self._metas = [
            self.cache.prepare(list(plan.seq_ids[a:b]), list(plan.query_lens[a:b])) if b > a else None
            for a, b in bounds
        ]
        self._step_id = plan.step_id
        return self._metas

    def _receive_prompt_kv(self, meta: BatchMetadata | None, links: Links) -> None:
        if meta is None:
            return
        srcs = [self.layout.compute_rank(0, r.tp_rank) for r in self.routes]
        for layer in range(self.num_layers):
            parts = [links.recv(src, "prompt_kv") for src in srcs]
            if any(p is None for p in parts):
                continue  # the step fails; the redo writes these slots
            with links.clock.section("attention"):
                k = torch.cat([p[0] for p in parts], dim=1)  # (T, Hkv_worker, D)
                v = torch.cat([p[1] for p in parts], dim=1)
                self.cache.write(layer, meta.slot_mapping, k, v)

    def _decode(self, plan: Plan, metas: list[BatchMetadata | None], links: Links) -> None:
        for task in self.tasks:
            j, layer = task.batch, task.index
            meta = metas[j]
            if meta is None:
                continue
            src = self.layout.slice_replica(j, layer)
            dst = self.layout.slice_replica(j, layer + 1)
            srcs = [self.layout.compute_rank(src, r.tp_rank) for r in self.routes]
            if self.split_attention:
                out = self._attend_split(meta, layer, srcs, links)
            else:
                out = self._attend(meta, layer, srcs, links)
            for route in self.routes:
                dst_rank = self.layout.compute_rank(dst, route.tp_rank)
                links.send(dst_rank, "attn_out", [] if out is None else [out[:, route.worker_q]])

    def _attend(self, meta: BatchMetadata, layer: int, srcs: list[int], links: Links) -> torch.Tensor | None:
        parts = [links.recv(src, "qkv") for src in srcs]
        if any(p is None for p in parts):
            return None
        with links.clock.section("attention"):
            q, k, v = (torch.cat([p[i] for p in parts], dim=1) for i in range(3))  # heads in route order
            attention = PagedAttention(self.cache, meta, backend=self.backend)  # writes k/v, then attends
            return attention.attend(q, k, v, layer)  # (b, Hq_w, D)

    def _attend_split(
        self, meta: BatchMetadata, layer: int, srcs: list[int], links: Links
    ) -> torch.Tensor | None:
        """Attention over the cached tokens as soon as q is here; the new token's k/v merged in after."""
        qs = [links.recv(src, "q") for src in srcs]
        # posted after q's receive (a transport serves one source's receives in order), so the k/v
        # message is taken off the wire while the cached tokens are read
        pending_kv = [links.irecv(src, "new_kv") for src in srcs]
        if any(p is None for p in qs):
            for pending in pending_kv:
                pending.wait()  # consume the matching message so the next step stays aligned
            return None
        q = torch.cat([p[0] for p in qs], dim=1)  # (b, Hq_w, D)
        scale = q.shape[-1] ** -0.5
        with links.clock.section("attention"):
            cached = meta.seq_lens - 1  # tokens before this step's (all >= 1: a prompt has >= 1 token)
            out_old, lse_old = decode_attention(
                q,
                self.cache.k[layer],
                self.cache.v[layer],
                meta.block_tables,
                cached,
                scale,
                backend=self.backend,
            )
        kvs = [pending.wait() for pending in pending_kv]
        if any(p is None for p in kvs):
            return None
        with links.clock.section("attention"):
            k = torch.cat([p[0] for p in kvs], dim=1)  # (b, Hkv_w, D)
            v = torch.cat([p[1] for p in kvs], dim=1)
            self.cache.write(layer, meta.slot_mapping, k, v)
            out_new, lse_new = new_token_attention(q, k, v, scale)
            out, _ = merge_attention(out_old, lse_old, out_new, lse_new)  # exact: disjoint key sets
            return out.to(q.dtype)
