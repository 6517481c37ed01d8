"""Launching a Lamina run: one process per rank (spawned here, or one rank under torchrun), or threads.

`generate_lamina(cfg, requests)` is the function behind `lamina-bench generate --system lamina`.
The processes launcher spawns A + B (+ P prefill) processes on this machine (127.0.0.1) over gloo or
NCCL under a `supervisor.Supervisor`, and replaces dead workers when rank 0 asks (recovery.py). Under
torchrun each process calls `serve_rank` for its own rank (lamina/__main__.py). The threads launcher runs every rank
as a thread of this process over InProcessTransport (no recovery, no tensor parallelism; for tests).

Faults under the processes launcher (the fault model): the supervisor sees a process exit at once and
a process whose heartbeat is silent for cfg.heartbeat_timeout_s (then SIGKILLs it: a hung process is a
dead one). What follows depends on who failed and when (`_Watch`):
- rank 0 (scheduler and compute rank 0) at any time, any rank during start-up (before its worker was
  built), a replacement while it starts, and any rank other than those being replaced during a
  recovery: the run ends with WorkerFailure (one line: rank, role, what happened, stage), at once;
- a prefill worker while the run serves: the run ends with WorkerFailure at once (it is not replaced);
- another worker while the run serves: rank 0 finds the dead peer on its links and replaces it
  (attention workers; compute replicas without tensor parallelism) and redoes the step, so the tokens
  do not change; where it cannot (a compute rank of a tensor-parallel replica) it stops with
  WorkerFailure;
- a worker after the run's steps are done (shutdown): the run's result stands; that worker's figures
  are missing from it.
Every process, replacements included, is killed and reaped before generate_lamina returns or raises.
"""

from __future__ import annotations

import os
import threading
import traceback
from collections.abc import Sequence
from functools import partial

import torch

from reference_impl import supervisor
from reference_impl.checkpoint import read_config
from reference_impl.distributed import GROUP_TIMEOUT_S, free_port, pin_gloo_to_loopback
from reference_impl.engine import Request
from reference_impl.errors import ConfigError, WorkerFailure
from reference_impl.faults import fault_from_env
from reference_impl.kv_accounting import blocks_for_requests
from reference_impl.lamina.build import build_worker, device_for
from reference_impl.lamina.clock import WorkerClock
from reference_impl.lamina.config import LaminaConfig, check_model
from reference_impl.lamina.fabric import ProcessFabric, StoreAddress, ThreadFabric, connect_store
from reference_impl.lamina.layout import COMPUTE, PREFILL, Layout
from reference_impl.lamina.results import LaminaRun
from reference_impl.lamina.serve import serve_scheduler, serve_worker
from reference_impl.prompts import check_vocab
from reference_impl.supervisor import ERROR_GRACE_S, Child, Failure, Stage, Supervisor, describe_stage
from reference_impl.transport import InProcessTransport

# After rank 0 handed over the run: how long the other processes may take to close their transports
# (each bounded by fabric._RETIRE_SEND_TIMEOUT_S = 5 s) and exit before they are killed.
SHUTDOWN_GRACE_S = 10.0
_PREFILL_LOST = "a prefill worker is not replaced"


def serve_rank(
    rank: int,
    cfg: LaminaConfig,
    requests: list[Request] | None,
    address: StoreAddress,
    epoch: int = 0,
    host_store: bool = False,
    threads: int | None = None,
    local: bool = True,
    respawn=None,
    make_fabric=ProcessFabric,
) -> LaminaRun | None:
    """Everything one process does for its rank; rank 0 returns the run, the others None.

    epoch > 0 starts a replacement that joins the run at that epoch. local: every rank runs on this
    machine (the spawning launcher), so rank 0 can kill dead ranks. respawn(ranks, epoch): rank 0's
    way to have replacements started (None: this launcher cannot replace workers). make_fabric: the
    fabric's class (the Ray launcher's kills ranks through Ray).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    layout = cfg.layout
    model_cfg = read_config(cfg.model_dir)
    store = connect_store(address, host_store, GROUP_TIMEOUT_S)
    if rank == 0 and epoch == 0:
        check_vocab(requests, model_cfg.vocab_size)
        num_blocks = cfg.num_blocks or blocks_for_requests(requests, cfg.block_size)
        store.set("num_blocks", str(num_blocks))
    else:
        num_blocks = int(store.get("num_blocks").decode())
    device = device_for(cfg, rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    fabric = make_fabric(rank, layout, store, device, cfg.comm_timeout_s, local)
    fabric.publish_pid()
    fabric.join(epoch)
    supervisor.fault_point("load")
    worker = build_worker(rank, cfg, model_cfg, num_blocks, fabric.tp_group(), device)
    supervisor.report(Stage.SERVING)
    if rank == 0:
        run = serve_scheduler(worker, fabric, cfg, requests, num_blocks, respawn)
    else:
        serve_worker(worker, fabric, WorkerClock(device=device))
        run = None
    fabric.close()  # after success only: after a failure the process just ends (leaving may wait on the dead)
    return run


def describe_rank(layout: Layout, rank: int) -> str:
    """'rank 0 (scheduler and compute worker)', 'rank 2 (attention worker 1)', ..."""
    if rank == 0:
        return "rank 0 (scheduler and compute worker)"
    if layout.role(rank) == PREFILL:
        return f"rank {rank} (prefill worker {layout.prefill_of(rank)})"
    if layout.role(rank) == COMPUTE:
        replica, tp_rank = layout.replica_of(rank), layout.tp_rank_of(rank)
        where = f"replica {replica}" + (f", tensor-parallel rank {tp_rank}" if layout.tp > 1 else "")
        return f"rank {rank} (compute worker, {where})"
    return f"rank {rank} (attention worker {layout.worker_of(rank)})"


def _serve_process(
    rank: int,
    cfg: LaminaConfig,
    requests: list[Request] | None,
    address: StoreAddress,
    epoch: int,
    threads: int,
) -> LaminaRun | None:
    """Body of one spawned process (a rank, or a replacement when epoch > 0), under the supervisor."""
    pin_gloo_to_loopback()
    respawn = _ask_for_replacements if rank == 0 else None
    host_store = rank == 0 and epoch == 0
    return serve_rank(rank, cfg, requests, address, epoch, host_store, threads, respawn=respawn)


def _ask_for_replacements(ranks: list[int], epoch: int) -> None:
    """Rank 0's respawn: the supervisor (in the launching process) starts the replacement processes."""
    supervisor.send(("respawn", tuple(ranks), epoch))


def _spawn(cfg: LaminaConfig, requests: list[Request]) -> LaminaRun:
    world = cfg.layout.world_size
    threads = max(1, (os.cpu_count() or 1) // world)  # processes must not oversubscribe the cores
    address = StoreAddress("127.0.0.1", free_port())
    fault = fault_from_env(world)  # test hook; None unless REFERENCE_IMPL_FAULT is set
    with Supervisor(world, cfg.heartbeat_timeout_s, partial(describe_rank, cfg.layout)) as sup:
        for rank in range(world):
            args = (rank, cfg, requests if rank == 0 else None, address, 0, threads)
            sup.start(
                rank, _serve_process, args, fault=fault if fault is not None and fault.rank == rank else None
            )
        run = _Watch(sup, cfg, address, threads).until_done()
        sup.close(grace_s=SHUTDOWN_GRACE_S)
    return run


class _Watch:
    """The launching process's side of a run: replacements on rank 0's request, and what a failure
    means for the run (see the module docstring); raises when the run cannot go on."""

    def __init__(self, sup: Supervisor, cfg: LaminaConfig, address: StoreAddress, threads: int) -> None:
        self.sup = sup
        self.cfg = cfg
        self.address = address
        self.threads = threads
        self.settled: set[int] = set()  # pids whose failure the run got over (recovered, or at shutdown)
        self.messages: dict[int, str] = {}  # pid -> the failure described when it was seen

    def until_done(self) -> LaminaRun:
        while True:
            for child, event in self.sup.poll():
                if isinstance(event, Failure):
                    self._judge(child, event)
                elif child.rank == 0:
                    done, run = self._from_rank0(event)
                    if done:
                        return run

    def _describe(self, failure: Failure) -> str:
        """The failure in one line; a worker that follows rank 0's steps is timed by rank 0's stage."""
        if failure.pid not in self.messages:
            stage = self.sup.current(0).stage()
            when = describe_stage(*stage) if failure.stage == Stage.SERVING else None
            self.messages[failure.pid] = self.sup.describe(failure, when)
        return self.messages[failure.pid]

    def _judge(self, child: Child, failure: Failure) -> None:
        """Raises WorkerFailure if the run cannot go on after this failure; else leaves it to rank 0."""
        rank0 = self.sup.current(0)
        run_stage = rank0.stage()[0]
        message = self._describe(failure)
        if child.rank == 0 or failure.stage == Stage.STARTING:
            raise WorkerFailure(message, failure)
        if failure.stage == Stage.SHUTDOWN or run_stage == Stage.SHUTDOWN:
            self.settled.add(failure.pid)  # the steps are done: the run stands without its figures
        elif self.cfg.layout.role(child.rank) == PREFILL:
            raise WorkerFailure(f"{message}; {_PREFILL_LOST}", failure)
        elif run_stage == Stage.RECOVERY and child.rank not in rank0.recovering():
            raise WorkerFailure(f"{message}; a second failure during a recovery ends the run", failure)
        # else: rank 0 finds the dead peer on its links, and asks for a replacement or stops

    def _from_rank0(self, message: tuple) -> tuple[bool, LaminaRun | None]:
        kind = message[0]
        if kind == "done":
            return True, message[1]
        if kind == "respawn":
            _, ranks, epoch = message
            for rank in ranks:
                old = self.sup.current(rank)
                if not old.ended:
                    self.sup.kill(old)  # declared dead by rank 0 (it may have been killed already)
                self.settled.update(c.pid for c in self.sup.children if c.rank == rank)
                args = (rank, self.cfg, None, self.address, epoch, self.threads)
                self.sup.start(rank, _serve_process, args, replacement=True)
            return False, None
        if kind == "error":
            raise self._error(message)
        return False, None

    def _error(self, message: tuple) -> Exception:
        """Rank 0 stopped with an error: bad input, or a failure (named by what the supervisor saw)."""
        _, category, line, trace = message
        if category == "config":
            return ConfigError(line)
        self.sup.watch_for(ERROR_GRACE_S)  # a peer's death that caused the error shows by then
        causes = [f for f in self.sup.failures if f.rank != 0 and f.pid not in self.settled]
        if causes:
            reason = line if category == "failure" else "the run cannot go on without it"
            if self.cfg.layout.role(causes[0].rank) == PREFILL:
                reason = _PREFILL_LOST  # the same line whether rank 0 or the supervisor saw it first
            return WorkerFailure(f"{self._describe(causes[0])}; {reason}", causes[0])
        if category == "failure":
            return WorkerFailure(line)
        return RuntimeError(f"lamina rank 0 failed:\n{trace}")


def _run_threads(cfg: LaminaConfig, requests: list[Request]) -> LaminaRun:
    model_cfg = read_config(cfg.model_dir)
    num_blocks = cfg.num_blocks or blocks_for_requests(requests, cfg.block_size)
    devices = [device_for(cfg, rank) for rank in range(cfg.layout.world_size)]
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
    requests = list(requests)
    if not requests:
        raise ConfigError("no requests to serve")
    model_cfg = read_config(cfg.model_dir)
    check_model(cfg, model_cfg)
    check_vocab(requests, model_cfg.vocab_size)  # before any process starts
    if cfg.launcher == "threads":
        return _run_threads(cfg, requests)
    if cfg.launcher == "ray":
        raise ConfigError(
            "launcher 'ray' needs a cluster: call lamina.ray_launch.generate_lamina_ray (generate --launcher ray)"
        )
    return _spawn(cfg, requests)
