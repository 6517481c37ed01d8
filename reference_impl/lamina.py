"""The Lamina runtime: attention offloading across processes (arXiv 2405.01814 v2), with its launchers.

    python -m reference_impl.lamina --model-dir DIR --prompts FILE.jsonl --compute-workers 1 --attention-workers 2
    torchrun --nproc-per-node 3 -m reference_impl.lamina --model-dir DIR --prompts FILE.jsonl --attention-workers 2

Without torchrun, the command spawns A + B processes on this machine (127.0.0.1); under torchrun
(RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set; WORLD_SIZE must be A + B) each process serves its rank
and the ranks may span machines (set GLOO_SOCKET_IFNAME to the interface gloo should use there).
`generate_lamina(cfg, requests)` is the function behind `lamina-bench generate --system lamina`.

Compute rank 0 runs the scheduler: `engine.Engine` (the same continuous batching and admission as the
homogeneous baseline) drives a `LaminaExecutor`, whose KV capacity is the attention pool's (every
attention worker has `num_blocks` blocks for its heads; admission counts blocks). Each forward becomes
a `workers.Plan` sent to every other rank; see workers.py for what the workers do with it.

Recovery. gloo groups cannot re-admit a process, so the runtime uses one TCP store for the whole run
and a fresh default process group per *epoch* (keys prefixed `epoch<e>/`). When a step reports a dead
worker (a failed or timed-out receive, a failed send), rank 0: (1) tells every live rank to regroup
(REGROUP), collects their acks on the old group and only then lets everyone leave it, so no message
of the old epoch is lost; (2) starts a replacement process for each dead rank (on rank 0's machine)
that loads the checkpoint (compute) or allocates an empty cache (attention); (3) everyone joins the
group of the new epoch; (4) for replaced attention workers, replica 0 recomputes the KV of every
running request from its prompt and generated tokens and ships it (REBUILD); (5) the failed step is
redone; survivors reuse that step's cache slots, so the tokens are exactly those of a run without the
failure. Limits: rank 0 (the scheduler) cannot be replaced; a compute rank of a tensor-parallel
replica cannot either (its peers' collectives fail); torchrun's agent stops every worker when one dies,
so recovery needs the spawning launcher; NCCL communicators do not survive a dead peer (CPU/gloo only).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.distributed as dist

from reference_impl.config import check_common_options
from reference_impl.distributed import free_port, pin_gloo_to_loopback
from reference_impl.dtypes import DTYPES
from reference_impl.engine import Engine, EngineRun, Request, SamplingParams, run_summary
from reference_impl.errors import ConfigError
from reference_impl.kv_accounting import blocks_for_requests
from reference_impl.kv_cache import DEFAULT_BLOCK_SIZE, PagedKVCache
from reference_impl.parallel import RowParallelLinear
from reference_impl.prompts import check_vocab, print_completions, read_prompts, sampling_params
from reference_impl.workers import (
    ATTENTION,
    CATEGORIES,
    COMPUTE,
    DECODE_LINK_KINDS,
    KINDS,
    AttentionWorker,
    ComputeWorker,
    HeadRouting,
    Layout,
    Links,
    Op,
    Phase,
    Plan,
    StepTimes,
    WorkerClock,
    split_batch,
    status_tensor,
)

LAUNCHERS = ("processes", "threads")
MAX_RECOVERIES_PER_STEP = 3
# How long a worker waits for rank 0's next plan (if rank 0 dies, the receive fails at once instead).
_CTRL_TIMEOUT_S = 24 * 3600.0
_RETIRE_SEND_TIMEOUT_S = 5.0  # leaving a group after a failure: sends to a dead peer never complete
_STEP_KINDS = ("prefill", "decode", "rebuild", "regroup", "stop")
_TRACE_LOCK = threading.Lock()  # torch.fx tracing patches module globals: one trace at a time per process


@dataclass(frozen=True)
class LaminaConfig:
    model_dir: str
    compute_workers: int = 1  # A: R compute replicas x tp ranks each
    attention_workers: int = 1  # B: each holds a contiguous range of KV heads
    pipeline_batches: int = 1  # n: 1 none, 2 ping-pong (1 replica), n >= 3 rotational (n - 1 replicas)
    attention_split: bool = False  # attention over cached tokens starts on q; the new token merged after
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
    comm_timeout_s: float = 300.0  # a receive waiting longer declares its peer dead
    kill_at: tuple[int, int] | None = None  # test hook: rank 0 SIGKILLs rank r at decode step s, (r, s)

    def __post_init__(self) -> None:
        layout = self.layout  # validates the worker counts against the pipeline mode
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
        if self.kill_at is not None:
            self._check_kill_at(layout)

    def _check_gpu_count(self, layout: Layout) -> None:
        # One GPU per process (NCCL cannot put two ranks on one device). The spawning launcher runs every
        # rank on this machine; under torchrun, LOCAL_WORLD_SIZE of them run here.
        local = int(os.environ.get("LOCAL_WORLD_SIZE", layout.world_size))
        if local > torch.cuda.device_count():
            raise ConfigError(
                f"{self.compute_workers} compute + {self.attention_workers} attention workers need {local} "
                f"GPUs on this machine, torch sees {torch.cuda.device_count()}"
            )

    def _check_kill_at(self, layout: Layout) -> None:
        rank, step = self.kill_at
        if self.launcher != "processes" or self.device != "cpu":
            raise ConfigError("kill_at needs the processes launcher on CPU (recovery runs over gloo)")
        if not 1 <= rank < layout.world_size or step < 0:
            raise ConfigError(
                f"kill_at rank must be in 1..{layout.world_size - 1} and step >= 0, got {self.kill_at}"
            )
        if layout.role(rank) == COMPUTE and layout.tp > 1:
            raise ConfigError(
                "a compute worker of a tensor-parallel replica cannot be replaced (see lamina.py)"
            )

    @property
    def layout(self) -> Layout:
        return Layout(self.compute_workers, self.attention_workers, self.pipeline_batches)


# ---- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerTimes:
    """Where one worker's time went (measured), per step and in total; see workers.StepTimes."""

    rank: int
    role: str  # "compute" | "attention"
    steps: tuple[StepTimes, ...]

    def total(self, category: str) -> float:
        return sum(getattr(s, f"{category}_s") for s in self.steps)

    @property
    def wall_s(self) -> float:
        return sum(s.wall_s for s in self.steps)

    def share(self, category: str, kinds: Sequence[str] = ("prefill", "decode")) -> float | None:
        """Share of `category` in the time of the steps of the given kinds (None if there were none)."""
        steps = [s for s in self.steps if s.kind in kinds]
        wall = sum(s.wall_s for s in steps)
        return sum(getattr(s, f"{category}_s") for s in steps) / wall if wall > 0 else None


@dataclass(frozen=True)
class LinkTraffic:
    """Messages of one kind, summed over every sender (measured: exact bytes from the transports)."""

    kind: str
    messages: int
    payload_bytes: int
    header_bytes: int


@dataclass(frozen=True)
class RecoveryEvent:
    step_id: int
    dead_ranks: tuple[int, ...]
    roles: tuple[str, ...]
    detected_at_s: float  # since the executor started: when the failed attempt ended
    failed_attempt_s: float  # the attempt that failed
    regroup_s: float  # replacements started and the fresh process group formed
    rebuild_s: float  # running requests' KV recomputed and shipped (0 if only compute workers died)
    redo_s: float  # the failed step run again
    rebuilt_tokens: int

    @property
    def recovery_s(self) -> float:
        """From detection to the end of the redone step."""
        return self.regroup_s + self.rebuild_s + self.redo_s


@dataclass(frozen=True)
class ModelShape:
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    elem_bytes: int  # e


@dataclass(frozen=True)
class LaminaRun:
    engine: EngineRun
    config: LaminaConfig
    model: ModelShape
    workers: tuple[WorkerTimes, ...]  # by rank; a worker killed mid-run is missing
    traffic: tuple[LinkTraffic, ...]
    decode_token_layers: int  # sum over decode attempts of (sequences x layers)
    header_bytes_per_message: int
    recoveries: tuple[RecoveryEvent, ...]

    @property
    def completions(self):
        return self.engine.completions

    def kind(self, name: str) -> LinkTraffic:
        return next((t for t in self.traffic if t.kind == name), LinkTraffic(name, 0, 0, 0))

    @property
    def link_payload_bytes_per_token_per_layer(self) -> float | None:
        """Decode traffic between the pools (q, k, v out; attention output back) per token per layer.

        None when nothing was decoded, and after a recovery: a killed worker's sent-byte counts die
        with it while its decode steps stay counted, so the ratio would be inexact.
        """
        if not self.decode_token_layers or self.recoveries:
            return None
        return sum(self.kind(k).payload_bytes for k in DECODE_LINK_KINDS) / self.decode_token_layers

    @property
    def link_header_bytes_per_token_per_layer(self) -> float | None:
        """Header bytes of the same messages per token per layer (None in the same cases)."""
        if not self.decode_token_layers or self.recoveries:
            return None
        return sum(self.kind(k).header_bytes for k in DECODE_LINK_KINDS) / self.decode_token_layers

    @property
    def recovery_s(self) -> float:
        """Seconds spent recovering (sum of RecoveryEvent.recovery_s); part of the engine's step times."""
        return sum(r.recovery_s for r in self.recoveries)

    @property
    def expected_link_bytes_per_token_per_layer(self) -> float:
        """(2 + 2/G) e d (the paper's link formula) with d = num_heads x head_dim, the width of q."""
        m = self.model
        return (2 + 2 * m.num_kv_heads / m.num_heads) * m.elem_bytes * m.num_heads * m.head_dim

    def summary(self) -> dict:
        """JSON-ready figures: the engine's timing, link bytes, per-worker breakdown, recoveries."""
        out = run_summary(self.engine)
        out.update(
            system="lamina",
            compute_workers=self.config.compute_workers,
            attention_workers=self.config.attention_workers,
            pipeline_batches=self.config.pipeline_batches,
            attention_split=self.config.attention_split,
            link_payload_bytes_per_token_per_layer=self.link_payload_bytes_per_token_per_layer,
            link_header_bytes_per_token_per_layer=self.link_header_bytes_per_token_per_layer,
            expected_link_bytes_per_token_per_layer=self.expected_link_bytes_per_token_per_layer,
            header_bytes_per_message=self.header_bytes_per_message,
            traffic={t.kind: asdict(t) for t in self.traffic},
            workers=[_worker_summary(w) for w in self.workers],
            recoveries=[{**asdict(r), "recovery_s": r.recovery_s} for r in self.recoveries],
            # included in decode_s (or the prefill time) of the steps that failed; subtract to compare
            total_recovery_s=self.recovery_s,
        )
        return out


def _worker_summary(w: WorkerTimes) -> dict:
    row = {"rank": w.rank, "role": w.role, "wall_s": w.wall_s}
    row.update({f"{c}_s": w.total(c) for c in CATEGORIES})
    row["idle_share"] = w.share("idle")
    return row


# ---- process groups per epoch --------------------------------------------------------------------


@dataclass(frozen=True)
class StoreAddress:
    """Where the run's TCP store lives (served by rank 0, or by torchrun's agent); keys get `prefix`."""

    host: str
    port: int
    prefix: str = "lamina/"


def connect_store(address: StoreAddress, host_it: bool, timeout_s: float) -> dist.Store:
    store = dist.TCPStore(
        address.host,
        address.port,
        None,
        host_it,
        timeout=datetime.timedelta(seconds=timeout_s),
        wait_for_workers=False,
    )
    return dist.PrefixStore(address.prefix, store)


class ProcessFabric:
    """One process's torch.distributed plumbing: the run's store and the process group of each epoch."""

    def __init__(
        self,
        rank: int,
        layout: Layout,
        store: dist.Store,
        device: torch.device,
        timeout_s: float,
        local: bool,
    ) -> None:
        self.rank = rank
        self.local = local  # all ranks on this machine: pids in the store are ours to kill
        self.layout = layout
        self.store = store
        self.device = device
        self.backend = "nccl" if device.type == "cuda" else "gloo"
        self.timeout_s = timeout_s
        self.transport = None
        self._tp_group = None
        self._retired: dict[str, list[int]] = {}  # traffic of the transports of earlier epochs

    def join(self, epoch: int) -> None:
        """Joins the epoch's group (blocks until all ranks have); the same calls in the same order everywhere."""
        from reference_impl.transport import TorchDistTransport

        dist.init_process_group(
            self.backend,
            store=dist.PrefixStore(f"epoch{epoch}/", self.store),
            rank=self.rank,
            world_size=self.layout.world_size,
            timeout=datetime.timedelta(seconds=self.timeout_s),
        )
        self.transport = TorchDistTransport(device=self.device, timeout_s=self.timeout_s)
        self._tp_group = None
        if self.layout.tp > 1:
            for replica in range(self.layout.replicas):
                ranks = [self.layout.compute_rank(replica, t) for t in range(self.layout.tp)]
                group = dist.new_group(ranks)  # collective: every rank creates every replica's group
                if self.rank in ranks:
                    self._tp_group = group

    def tp_group(self):
        return self._tp_group

    def links(self, clock: WorkerClock) -> Links:
        return Links(self.transport, clock, self.timeout_s)

    @property
    def header_bytes_per_message(self) -> int:
        return self.transport.header_bytes_per_message

    def regroup(self, epoch: int) -> None:
        """Leaves the current group once rank 0 says every live rank has acked, then joins `epoch`'s."""
        key = f"regroup{epoch}/go"
        if self.rank == 0:
            self.store.set(key, "1")
        else:
            self.store.wait([key], datetime.timedelta(seconds=self.timeout_s))
        self._retire()
        self.join(epoch)

    def _retire(self) -> None:
        _add_traffic(self._retired, _sent_by_kind(self.transport))
        with contextlib.suppress(RuntimeError, TimeoutError):  # a send to a dead peer; the group goes next
            self.transport.close(timeout_s=_RETIRE_SEND_TIMEOUT_S)
        dist.destroy_process_group()
        self.transport = None

    def traffic(self) -> dict[str, list[int]]:
        """kind -> [messages, payload bytes, header bytes] sent by this process over the whole run."""
        out = {k: list(v) for k, v in self._retired.items()}
        _add_traffic(out, _sent_by_kind(self.transport))
        return out

    def close(self) -> None:
        self._retire()

    def publish_pid(self) -> None:
        self.store.set(f"pid/{self.rank}", str(os.getpid()))

    def kill(self, rank: int) -> None:
        """SIGKILL a rank's process (it must run on this machine)."""
        if not self.local:
            raise RuntimeError(
                f"rank {rank} may run on another machine; only the spawning launcher kills ranks"
            )
        pid = int(self.store.get(f"pid/{rank}").decode())
        with contextlib.suppress(ProcessLookupError):  # gone already
            os.kill(pid, signal.SIGKILL)


class ThreadFabric:
    """All ranks as threads of one process over InProcessTransport: no recovery, no tensor parallelism."""

    def __init__(self, transport, timeout_s: float) -> None:
        self.transport = transport
        self.timeout_s = timeout_s
        self.header_bytes_per_message = transport.header_bytes_per_message

    def tp_group(self):
        return None

    def links(self, clock: WorkerClock) -> Links:
        return Links(self.transport, clock, self.timeout_s)

    def regroup(self, epoch: int) -> None:
        raise RuntimeError("a worker failed; recovery needs the processes launcher")

    def traffic(self) -> dict[str, list[int]]:
        return _sent_by_kind(self.transport)

    def close(self) -> None:
        return None


# ---- building workers ----------------------------------------------------------------------------


def _routing(cfg: LaminaConfig, model_cfg) -> HeadRouting:
    return HeadRouting(model_cfg.num_heads, model_cfg.num_kv_heads, cfg.layout.tp, cfg.attention_workers)


def check_model(cfg: LaminaConfig, model_cfg) -> None:
    """ConfigError unless the model splits over this layout (TP shards, head ranges)."""
    from reference_impl.model import check_tp

    check_tp(model_cfg, cfg.layout.tp)
    _routing(cfg, model_cfg)


def _device_for(cfg: LaminaConfig, rank: int) -> torch.device:
    if cfg.device == "cpu":
        return torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", rank))
    return torch.device("cuda", local % torch.cuda.device_count())


def bind_tp_group(model, group) -> None:
    """Points the model's row-parallel linears at the tensor-parallel group of the current epoch."""
    for module in model.modules():
        if isinstance(module, RowParallelLinear):
            module.group = group


def build_worker(rank: int, cfg: LaminaConfig, model_cfg, num_blocks: int, tp_group, device: torch.device):
    from reference_impl.checkpoint import load_model
    from reference_impl.converter import split_model

    layout = cfg.layout
    routing = _routing(cfg, model_cfg)
    dtype = DTYPES[cfg.dtype]
    if layout.role(rank) == COMPUTE:
        tp_rank = layout.tp_rank_of(rank)
        model = load_model(cfg.model_dir, device, dtype, tp_rank=tp_rank, tp_size=layout.tp, group=tp_group)
        with _TRACE_LOCK:
            split = split_model(model)
        return ComputeWorker(rank, layout, routing, model, split, cfg.attention_split)
    return AttentionWorker(
        rank,
        layout,
        routing,
        model_cfg.num_layers,
        model_cfg.head_dim,
        num_blocks,
        cfg.block_size,
        dtype,
        device,
        cfg.attention_backend,
        cfg.attention_split,
    )


# ---- rank 0: the executor and the engine ---------------------------------------------------------


@dataclass
class _Attempt:
    hidden: torch.Tensor | None  # (B, d) last-token hidden states, None if a part is missing
    dead: set[int] = field(default_factory=set)
    poisoned: bool = False
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.hidden is not None and not self.dead and not self.poisoned


class LaminaExecutor:
    """engine.Executor of compute rank 0: KV accounting of the attention pool, one Plan per forward.

    KV accounting uses a bookkeeping-only PagedKVCache (1 layer, 1 head, head_dim 1): the same
    allocator code as the attention workers' caches, which all have `num_blocks` blocks, so its
    answers are the pool's. Every reservation and free is forwarded with the next plan.
    """

    def __init__(
        self,
        worker: ComputeWorker,
        fabric,
        cfg: LaminaConfig,
        num_blocks: int,
        clock: WorkerClock,
        respawn: Callable[[list[int], int], None] | None = None,
    ) -> None:
        self.worker = worker
        self.fabric = fabric
        self.cfg = cfg
        self.layout = cfg.layout
        self.clock = clock
        self.respawn = respawn
        self.max_position = worker.model.config.max_position
        self.ledger = PagedKVCache(1, 1, 1, num_blocks, cfg.block_size, torch.float32, "cpu")
        self._reservations: dict[int, int] = {}  # seq -> tokens reserved (what a rebuild re-reserves)
        self._history: dict[int, list[int]] = {}  # seq -> tokens whose KV the pool holds
        self._reserves: list[tuple[int, int]] = []  # since the last plan
        self._frees: list[int] = []
        self._step_id = 0
        self._decode_steps = 0
        self._epoch = 0
        self._killed = False
        self._start = time.perf_counter()
        self.decode_token_layers = 0
        self.recoveries: list[RecoveryEvent] = []
        self.traffic: tuple[LinkTraffic, ...] = ()  # filled by stop()

    # -- KV accounting (engine.Executor) --
    def kv_capacity_tokens(self) -> int:
        return self.ledger.capacity_tokens

    def kv_free_tokens(self) -> int:
        return self.ledger.free_tokens

    def can_reserve(self, num_tokens: int) -> bool:
        return self.ledger.can_reserve(num_tokens)

    def reserve(self, seq_id: int, num_tokens: int) -> None:
        self.ledger.reserve(seq_id, num_tokens)
        self._reservations[seq_id] = num_tokens
        self._history[seq_id] = []
        self._reserves.append((seq_id, num_tokens))

    def free(self, seq_id: int) -> None:
        self.ledger.free(seq_id)
        del self._reservations[seq_id]
        del self._history[seq_id]
        self._frees.append(seq_id)

    def agree(self, token_ids: torch.Tensor) -> torch.Tensor:
        return token_ids  # only rank 0 samples; the others get the ids with the next plan

    # -- forward --
    @torch.inference_mode()
    def forward(self, seq_ids: list[int], tokens: list[list[int]]) -> torch.Tensor:
        plan = self._next_plan(seq_ids, tokens)
        attempt = self._run(plan)
        for _ in range(MAX_RECOVERIES_PER_STEP):
            if attempt.ok:
                break
            attempt = self._recover(plan, attempt)
        if not attempt.ok:
            raise RuntimeError(f"step {plan.step_id} failed {MAX_RECOVERIES_PER_STEP + 1} times; giving up")
        for seq_id, chunk in zip(seq_ids, tokens, strict=True):
            self._history[seq_id].extend(chunk)
        with self.clock.section("dense"):
            logits = self.worker.model.logits(attempt.hidden)  # (B, V) fp32
        self.clock.mark_step(plan.step_id, "prefill" if plan.phase == Phase.PREFILL else "decode")
        return logits

    def _next_plan(self, seq_ids: list[int], tokens: list[list[int]]) -> Plan:
        decode = all(len(t) == 1 for t in tokens) and all(self._history[s] for s in seq_ids)
        n = self.layout.pipeline_batches if decode else 1
        plan = Plan(
            op=Op.STEP,
            step_id=self._step_id,
            phase=Phase.DECODE if decode else Phase.PREFILL,
            seq_ids=tuple(seq_ids),
            query_lens=tuple(len(t) for t in tokens),
            positions=tuple(len(self._history[s]) for s in seq_ids),
            micro_batches=split_batch(len(seq_ids), n) if decode else (),
            reserves=tuple(self._reserves),
            frees=tuple(self._frees),
            tokens=tuple(t for chunk in tokens for t in chunk),
        )
        self._reserves, self._frees = [], []
        self._step_id += 1
        return plan

    def _broadcast(self, plan: Plan, links: Links) -> None:
        compute_msg, attention_msg = plan.encode(), plan.for_attention().encode()
        for rank in range(1, self.layout.world_size):
            msg = compute_msg if self.layout.role(rank) == COMPUTE else attention_msg
            links.send(rank, "ctrl", [msg])

    def _run(self, plan: Plan) -> _Attempt:
        """One attempt of a step (or a rebuild) on every rank; failures are reported, not raised."""
        started = time.perf_counter()
        links = self.fabric.links(self.clock)
        self._broadcast(plan, links)
        if plan.op == Op.STEP and plan.phase == Phase.DECODE:
            self.decode_token_layers += len(plan.seq_ids) * self.worker.num_layers
            self._maybe_kill(plan)
        own = self.worker.execute(plan, links)
        attempt = _Attempt(hidden=None, poisoned=own.poisoned)
        if plan.op == Op.STEP:
            attempt.hidden = self._gather_hidden(plan, own.hidden, links)
        for rank in range(1, self.layout.compute_workers):
            status = links.recv(rank, "status")
            if status is None:
                attempt.dead.add(rank)
            else:
                values = status[0].tolist()
                attempt.poisoned |= bool(values[0])
                attempt.dead.update(values[1:])
        links.flush()
        attempt.dead |= links.dead
        attempt.elapsed_s = time.perf_counter() - started
        return attempt

    def _gather_hidden(self, plan: Plan, own: dict, links: Links) -> torch.Tensor | None:
        """Last-token hidden states (B, d) of every micro-batch, from the replicas that ran the last slice."""
        if plan.phase == Phase.PREFILL:
            return own.get(0)
        parts = []
        for j, (start, stop) in enumerate(plan.micro_batch_bounds()):
            if start == stop:
                continue
            owner = self.layout.slice_replica(j, self.worker.num_layers)
            if owner == self.worker.replica:
                part = own.get(j)
            else:
                got = links.recv(self.layout.compute_rank(owner, 0), "hidden")
                part = None if got is None else got[0]
            if part is None:
                return None
            parts.append(part)
        return torch.cat(parts)

    def _maybe_kill(self, plan: Plan) -> None:
        if self.cfg.kill_at is None or self._killed or plan.redo:
            return
        rank, at_step = self.cfg.kill_at
        if self._decode_steps == at_step:
            self.fabric.kill(rank)  # right after the plan went out: the victim dies mid-step
            self._killed = True
        self._decode_steps += 1

    # -- recovery --
    def _recover(self, plan: Plan, failed: _Attempt) -> _Attempt:
        """Replace the dead ranks, refill replaced attention workers, and run the step again."""
        t0 = time.perf_counter()
        dead = sorted(failed.dead)
        if dead:
            self._regroup(dead, plan.step_id)
        t1 = time.perf_counter()
        workers = [self.layout.worker_of(r) for r in dead if self.layout.role(r) == ATTENTION]
        rebuilt = self._rebuild(workers, plan.step_id) if workers else 0
        t2 = time.perf_counter()
        attempt = self._run(replace(plan, redo=True))
        event = RecoveryEvent(
            step_id=plan.step_id,
            dead_ranks=tuple(dead),
            roles=tuple(self.layout.role(r) for r in dead),
            detected_at_s=t0 - self._start,
            failed_attempt_s=failed.elapsed_s,
            regroup_s=t1 - t0,
            rebuild_s=t2 - t1,
            redo_s=attempt.elapsed_s,
            rebuilt_tokens=rebuilt,
        )
        self.recoveries.append(event)
        return attempt

    def _regroup(self, dead: list[int], step_id: int) -> None:
        if 0 in dead:
            raise RuntimeError("rank 0 cannot fail and recover itself")
        if self.layout.tp > 1 and any(self.layout.role(r) == COMPUTE for r in dead):
            raise RuntimeError(
                f"compute ranks {dead} of a tensor-parallel replica died; they cannot be replaced"
            )
        if self.respawn is None:
            raise RuntimeError(f"ranks {dead} failed; replacing workers needs the spawning launcher")
        self._epoch += 1
        live = [r for r in range(1, self.layout.world_size) if r not in dead]
        links = self.fabric.links(self.clock)
        with self.clock.section("network"):
            msg = Plan(op=Op.REGROUP, epoch=self._epoch, targets=tuple(dead)).encode()
            for rank in live:
                links.send(rank, "ctrl", [msg])
            for rank in live:  # each live rank has consumed everything of the old epoch
                if links.recv(rank, "ack") is None:
                    raise RuntimeError(f"rank {rank} failed during the recovery of ranks {dead}")
            links.flush()
        for rank in dead:
            self.fabric.kill(rank)  # a rank declared dead after a timeout may still run
        self.respawn(dead, self._epoch)
        self.fabric.regroup(self._epoch)
        bind_tp_group(self.worker.model, self.fabric.tp_group())
        self.clock.mark_step(step_id, "regroup")

    def _rebuild(self, workers: list[int], step_id: int) -> int:
        """Replica 0 recomputes every running request's KV (prompt + generated tokens) for `workers`."""
        seqs = [s for s, h in self._history.items() if h]
        plan = Plan(
            op=Op.REBUILD,
            step_id=step_id,
            seq_ids=tuple(seqs),
            query_lens=tuple(len(self._history[s]) for s in seqs),
            positions=(0,) * len(seqs),
            reserves=tuple(sorted(self._reservations.items())),
            targets=tuple(workers),
            tokens=tuple(t for s in seqs for t in self._history[s]),
        )
        attempt = self._run(plan)
        if attempt.dead or attempt.poisoned:
            raise RuntimeError(
                f"ranks {sorted(attempt.dead)} failed while rebuilding attention workers {workers}"
            )
        self.clock.mark_step(step_id, "rebuild")
        return plan.num_tokens

    # -- end of the run --
    def abort(self) -> None:
        """After a failure on rank 0: STOP to every rank, best effort, without waiting for anything."""
        self._broadcast(Plan(op=Op.STOP), self.fabric.links(self.clock))

    def stop(self) -> list[WorkerTimes]:
        """Stops every worker and collects their time breakdowns and traffic (merged into self.traffic)."""
        links = self.fabric.links(self.clock)
        self._broadcast(Plan(op=Op.STOP), links)
        workers, traffic = [], {}
        for rank in range(1, self.layout.world_size):
            got = links.recv(rank, "stats")
            if got is None:
                continue  # a worker that died at the very end: its figures are lost
            workers.append(WorkerTimes(rank, self.layout.role(rank), _decode_steps_table(got[0])))
            _add_traffic(traffic, _decode_traffic_table(got[1]))
        links.flush()
        self.clock.mark_step(self._step_id, "stop")
        _add_traffic(traffic, self.fabric.traffic())
        self.traffic = tuple(LinkTraffic(k, *v) for k, v in sorted(traffic.items()) if any(v))
        return [WorkerTimes(0, COMPUTE, tuple(self.clock.steps)), *workers]


class LaminaEngine(Engine):
    """engine.Engine over a LaminaExecutor: the baseline's continuous batching, FCFS admission and
    sampling unchanged, with KV admission by the attention pool's capacity (the executor's ledger)."""

    def __init__(
        self,
        executor: LaminaExecutor,
        sampling: SamplingParams | None = None,
        max_batch_size: int | None = None,
    ) -> None:
        if not isinstance(executor, LaminaExecutor):
            raise TypeError(f"LaminaEngine needs a LaminaExecutor, got {type(executor).__name__}")
        super().__init__(executor, sampling, max_batch_size)


def _sent_by_kind(transport) -> dict[str, list[int]]:
    """kind -> [messages, payload bytes, header bytes] this endpoint sent (receivers are not counted)."""
    return {
        k: [s.messages_sent, s.payload_bytes_sent, s.header_bytes_sent]
        for k, s in transport.stats.by_kind.items()
    }


def _add_traffic(acc: dict[str, list[int]], more: dict[str, list[int]]) -> None:
    for kind, values in more.items():
        row = acc.setdefault(kind, [0, 0, 0])
        for i, v in enumerate(values):
            row[i] += int(v)


def _steps_table(steps: Sequence[StepTimes]) -> torch.Tensor:
    rows = [
        [s.step_id, _STEP_KINDS.index(s.kind), *(getattr(s, f"{c}_s") for c in CATEGORIES)] for s in steps
    ]
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 2 + len(CATEGORIES))


def _decode_steps_table(table: torch.Tensor) -> tuple[StepTimes, ...]:
    return tuple(StepTimes(int(r[0]), _STEP_KINDS[int(r[1])], *r[2:]) for r in table.tolist())


def _traffic_table(traffic: dict[str, list[int]]) -> torch.Tensor:
    return torch.tensor([traffic.get(k, [0, 0, 0]) for k in KINDS], dtype=torch.int64)  # (len(KINDS), 3)


def _decode_traffic_table(table: torch.Tensor) -> dict[str, list[int]]:
    return {k: row for k, row in zip(KINDS, table.tolist(), strict=True) if any(row)}


# ---- every other rank: the serve loop ------------------------------------------------------------


def serve_worker(worker, fabric, clock: WorkerClock) -> None:
    """Runs plans from rank 0 until STOP; then sends rank 0 this worker's times and traffic."""
    is_compute = isinstance(worker, ComputeWorker)
    while True:
        links = fabric.links(clock)
        got = links.recv(0, "ctrl", timeout_s=_CTRL_TIMEOUT_S)
        if got is None:
            raise RuntimeError(f"rank {worker.rank}: lost rank 0 (the scheduler); stopping")
        plan = Plan.decode(got[0])
        if plan.op == Op.STOP:
            clock.mark_step(plan.step_id, "stop")
            links.send(0, "stats", [_steps_table(clock.steps), _traffic_table(fabric.traffic())])
            links.flush()
            return
        if plan.op == Op.REGROUP:
            links.send(0, "ack", [torch.zeros(1, dtype=torch.int64)])
            links.flush()
            fabric.regroup(plan.epoch)
            if is_compute:
                bind_tp_group(worker.model, fabric.tp_group())
            clock.mark_step(plan.step_id, "regroup")
            continue
        out = worker.execute(plan, links)
        if is_compute:
            links.send(0, "status", [status_tensor(out.poisoned, links.dead)])
        links.flush()
        clock.mark_step(plan.step_id, _step_kind(plan))


def _step_kind(plan: Plan) -> str:
    if plan.op == Op.REBUILD:
        return "rebuild"
    return "prefill" if plan.phase == Phase.PREFILL else "decode"


def _model_shape(cfg: LaminaConfig, model_cfg) -> ModelShape:
    elem_bytes = torch.empty((), dtype=DTYPES[cfg.dtype]).element_size()
    m = model_cfg
    return ModelShape(m.num_layers, m.hidden_size, m.num_heads, m.num_kv_heads, m.head_dim, elem_bytes)


def serve_scheduler(
    worker: ComputeWorker, fabric, cfg: LaminaConfig, requests: list[Request], num_blocks: int, respawn=None
) -> LaminaRun:
    """Rank 0: serves every request with the Engine, then stops the workers and assembles the run."""
    clock = WorkerClock(device=worker.device)
    executor = LaminaExecutor(worker, fabric, cfg, num_blocks, clock, respawn)
    try:
        engine_run = LaminaEngine(executor, sampling_params(cfg), max_batch_size=cfg.max_batch_size).run(
            requests
        )
    except BaseException:
        executor.abort()  # tell the other ranks to exit; their figures are not waited for
        raise
    workers = executor.stop()
    return LaminaRun(
        engine=engine_run,
        config=cfg,
        model=_model_shape(cfg, worker.model.config),
        workers=tuple(sorted(workers, key=lambda w: w.rank)),
        traffic=executor.traffic,
        decode_token_layers=executor.decode_token_layers,
        header_bytes_per_message=fabric.header_bytes_per_message,
        recoveries=tuple(executor.recoveries),
    )


# ---- processes -----------------------------------------------------------------------------------


def serve_rank(
    rank: int,
    cfg: LaminaConfig,
    requests: list[Request] | None,
    address: StoreAddress,
    epoch: int = 0,
    host_store: bool = False,
    threads: int | None = None,
    local: bool = True,
) -> LaminaRun | None:
    """Everything one process does for its rank; rank 0 returns the run, the others None.

    epoch > 0 starts a replacement that joins the run at that epoch. local: every rank runs on this
    machine (the spawning launcher), so rank 0 can kill and replace dead ranks.
    """
    from reference_impl.checkpoint import read_config

    if threads is not None:
        torch.set_num_threads(threads)
    layout = cfg.layout
    model_cfg = read_config(cfg.model_dir)
    store = connect_store(address, host_store, cfg.comm_timeout_s)
    if rank == 0 and epoch == 0:
        check_vocab(requests, model_cfg.vocab_size)
        num_blocks = cfg.num_blocks or blocks_for_requests(requests, cfg.block_size)
        store.set("num_blocks", str(num_blocks))
    else:
        num_blocks = int(store.get("num_blocks").decode())
    device = _device_for(cfg, rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    fabric = ProcessFabric(rank, layout, store, device, cfg.comm_timeout_s, local)
    fabric.publish_pid()
    fabric.join(epoch)
    worker = build_worker(rank, cfg, model_cfg, num_blocks, fabric.tp_group(), device)
    if rank == 0:
        respawn = _Respawner(cfg, address, threads) if local else None
        try:
            return serve_scheduler(worker, fabric, cfg, requests, num_blocks, respawn)
        finally:
            fabric.close()
            if respawn is not None:
                respawn.join()
    serve_worker(worker, fabric, WorkerClock(device=device))
    fabric.close()
    return None


class _Respawner:
    """Rank 0's helper that starts replacement processes for dead ranks (on this machine)."""

    def __init__(self, cfg: LaminaConfig, address: StoreAddress, threads: int | None) -> None:
        self.cfg, self.address, self.threads = cfg, address, threads
        self.procs = []

    def __call__(self, ranks: list[int], epoch: int) -> None:
        ctx = torch.multiprocessing.get_context("spawn")
        for rank in ranks:
            args = (rank, self.cfg, self.address, epoch, self.threads)
            proc = ctx.Process(target=_replacement_main, args=args, daemon=True)  # ends with rank 0
            proc.start()
            self.procs.append(proc)

    def join(self) -> None:
        for proc in self.procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()


def _replacement_main(
    rank: int, cfg: LaminaConfig, address: StoreAddress, epoch: int, threads: int | None
) -> None:
    try:
        pin_gloo_to_loopback()
        serve_rank(rank, cfg, None, address, epoch=epoch, threads=threads)
    except BaseException:
        print(f"replacement for rank {rank} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        raise


def _process_main(rank: int, cfg: LaminaConfig, requests, address: StoreAddress, threads: int, queue) -> None:
    """Body of one spawned process; rank 0 reports the run (or the first failure) on `queue`."""
    try:
        pin_gloo_to_loopback()
        run = serve_rank(rank, cfg, requests, address, host_store=rank == 0, threads=threads)
        if rank == 0:
            queue.put(("ok", run))
    except ConfigError as exc:
        queue.put(("config", str(exc)))
    except BaseException:
        queue.put(("error", f"rank {rank}: {traceback.format_exc()}"))


def _spawn(cfg: LaminaConfig, requests: list[Request]) -> LaminaRun:
    world = cfg.layout.world_size
    threads = max(1, (os.cpu_count() or 1) // world)  # processes must not oversubscribe the cores
    address = StoreAddress("127.0.0.1", free_port())
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.SimpleQueue()
    procs = [
        ctx.Process(
            target=_process_main, args=(r, cfg, requests if r == 0 else None, address, threads, queue)
        )
        for r in range(world)
    ]
    status, payload = "error", None
    try:  # whatever happens here (Ctrl-C included), no child outlives this call
        for proc in procs:
            proc.start()
        status, payload = _first_report(queue, procs[0])
    finally:
        for proc in procs:
            if proc.pid is None:
                continue  # never started
            proc.join(timeout=30 if status == "ok" else 0.1)
            if proc.is_alive():
                proc.kill()
                proc.join()
    if status == "config":
        raise ConfigError(payload)
    if status != "ok":
        raise RuntimeError(f"lamina worker failed:\n{payload}")
    return payload


def _first_report(queue, rank0) -> tuple[str, object]:
    """The first message on the queue: rank 0's run, or the first failure of any rank."""
    while queue.empty():
        if not rank0.is_alive() and queue.empty():
            return "error", f"rank 0 exited with code {rank0.exitcode} without a result"
        time.sleep(0.02)
    return queue.get()


def _run_threads(cfg: LaminaConfig, requests: list[Request]) -> LaminaRun:
    from reference_impl.checkpoint import read_config
    from reference_impl.transport import InProcessTransport

    model_cfg = read_config(cfg.model_dir)
    num_blocks = cfg.num_blocks or blocks_for_requests(requests, cfg.block_size)
    devices = [_device_for(cfg, rank) for rank in range(cfg.layout.world_size)]
    transports = InProcessTransport.create(cfg.layout.world_size, devices, timeout_s=cfg.comm_timeout_s)
    errors: list[str] = []

    # Every worker is built here, before any thread runs: torch.fx tracing (split_model) patches
    # nn.Module.__call__ process-wide, so a trace must never overlap a forward pass in another thread.
    workers = [
        build_worker(r, cfg, model_cfg, num_blocks, None, devices[r]) for r in range(cfg.layout.world_size)
    ]

    def serve(rank: int) -> None:
        try:
            fabric = ThreadFabric(transports[rank], cfg.comm_timeout_s)
            serve_worker(workers[rank], fabric, WorkerClock(device=devices[rank]))
        except BaseException:
            errors.append(f"rank {rank}: {traceback.format_exc()}")

    threads = [
        threading.Thread(target=serve, args=(r,), daemon=True) for r in range(1, cfg.layout.world_size)
    ]
    for t in threads:
        t.start()
    fabric = ThreadFabric(transports[0], cfg.comm_timeout_s)
    try:
        run = serve_scheduler(workers[0], fabric, cfg, requests, num_blocks)
    finally:
        for t in threads:
            t.join(timeout=30)
    if errors:
        raise RuntimeError("lamina worker thread failed:\n" + "\n".join(errors))
    return run


def generate_lamina(cfg: LaminaConfig, requests: Sequence[Request]) -> LaminaRun:
    """Serves `requests` with A compute + B attention workers (processes on this machine, or threads)."""
    from reference_impl.checkpoint import read_config

    requests = list(requests)
    if not requests:
        raise ConfigError("no requests to serve")
    model_cfg = read_config(cfg.model_dir)
    check_model(cfg, model_cfg)
    check_vocab(requests, model_cfg.vocab_size)  # before any process starts
    if cfg.launcher == "threads":
        return _run_threads(cfg, requests)
    return _spawn(cfg, requests)


# ---- command line (spawning launcher, or one rank under torchrun) --------------------------------


_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _torchrun_env() -> tuple[int, int, str, int]:
    """(rank, world size, store host, store port) from torchrun's variables; ConfigError if incomplete."""
    missing = [name for name in _TORCHRUN_VARS if not os.environ.get(name)]
    if missing:
        raise ConfigError(
            f"RANK and WORLD_SIZE are set but {', '.join(missing)} not: start the ranks with torchrun, "
            "or unset RANK and WORLD_SIZE to spawn them on this machine"
        )
    try:
        rank, world, port = (int(os.environ[name]) for name in ("RANK", "WORLD_SIZE", "MASTER_PORT"))
    except ValueError:
        got = ", ".join(f"{name}={os.environ[name]!r}" for name in ("RANK", "WORLD_SIZE", "MASTER_PORT"))
        raise ConfigError(f"RANK, WORLD_SIZE and MASTER_PORT must be integers, got {got}") from None
    if not 0 <= rank < world:
        raise ConfigError(f"RANK {rank} is outside 0..WORLD_SIZE-1 (WORLD_SIZE {world})")
    return rank, world, os.environ["MASTER_ADDR"], port


def _torchrun_rank(cfg: LaminaConfig, prompts: str) -> LaminaRun | None:
    from reference_impl.checkpoint import read_config

    rank, world, master_addr, master_port = _torchrun_env()
    if world != cfg.layout.world_size:
        raise ConfigError(
            f"torchrun started {world} processes, but {cfg.compute_workers} compute + {cfg.attention_workers} "
            f"attention workers need {cfg.layout.world_size}"
        )
    check_model(cfg, read_config(cfg.model_dir))
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun's agent hosts it
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    address = StoreAddress(master_addr, master_port, prefix=f"lamina/{restart}/")
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    threads = max(1, (os.cpu_count() or 1) // local_world)
    requests = read_prompts(prompts) if rank == 0 else None
    host = rank == 0 and not agent_store
    return serve_rank(rank, cfg, requests, address, host_store=host, threads=threads, local=False)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reference_impl.lamina", description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--prompts", required=True, help='JSONL: {"prompt_ids": [...], "max_new_tokens": N}')
    p.add_argument("--compute-workers", type=int, default=1)
    p.add_argument("--attention-workers", type=int, default=1)
    p.add_argument("--pipeline-batches", type=int, default=1)
    p.add_argument("--attention-split", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE)
    p.add_argument("--num-blocks", type=int, default=None)
    p.add_argument("--max-batch-size", type=int, default=None)
    p.add_argument("--ignore-eos", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = LaminaConfig(
            model_dir=args.model_dir,
            compute_workers=args.compute_workers,
            attention_workers=args.attention_workers,
            pipeline_batches=args.pipeline_batches,
            attention_split=args.attention_split,
            device=args.device,
            dtype=args.dtype,
            block_size=args.block_size,
            num_blocks=args.num_blocks,
            max_batch_size=args.max_batch_size,
            ignore_eos=args.ignore_eos,
        )
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            run = _torchrun_rank(cfg, args.prompts)
        else:
            run = generate_lamina(cfg, read_prompts(args.prompts))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if run is None:
        return 0  # a worker rank under torchrun: rank 0 prints
    print_completions(run.completions, run.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
