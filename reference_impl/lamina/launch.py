"""Launching a Lamina run: one process per rank (spawned here, or one rank under torchrun), or threads.

`generate_lamina(cfg, requests)` is the function behind `lamina-bench generate --system lamina`.
The processes launcher spawns A + B processes on this machine (127.0.0.1) over gloo or NCCL; rank 0
can replace dead workers (`Respawner`, recovery.py). Under torchrun each process calls `serve_rank`
for its own rank (lamina/__main__.py). The threads launcher runs every rank as a thread of this
process over InProcessTransport (no recovery, no tensor parallelism; for tests).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from collections.abc import Sequence

import torch

from reference_impl.checkpoint import read_config
from reference_impl.distributed import free_port, pin_gloo_to_loopback
from reference_impl.engine import Request
from reference_impl.errors import ConfigError
from reference_impl.kv_accounting import blocks_for_requests
from reference_impl.lamina.build import build_worker, device_for
from reference_impl.lamina.clock import WorkerClock
from reference_impl.lamina.config import LaminaConfig, check_model
from reference_impl.lamina.fabric import ProcessFabric, StoreAddress, ThreadFabric, connect_store
from reference_impl.lamina.results import LaminaRun
from reference_impl.lamina.serve import serve_scheduler, serve_worker
from reference_impl.prompts import check_vocab
from reference_impl.transport import InProcessTransport


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
    device = device_for(cfg, rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    fabric = ProcessFabric(rank, layout, store, device, cfg.comm_timeout_s, local)
    fabric.publish_pid()
    fabric.join(epoch)
    worker = build_worker(rank, cfg, model_cfg, num_blocks, fabric.tp_group(), device)
    if rank == 0:
        respawn = Respawner(cfg, address, threads) if local else None
        try:
            return serve_scheduler(worker, fabric, cfg, requests, num_blocks, respawn)
        finally:
            fabric.close()
            if respawn is not None:
                respawn.join()
    serve_worker(worker, fabric, WorkerClock(device=device))
    fabric.close()
    return None


class Respawner:
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
    return _spawn(cfg, requests)
