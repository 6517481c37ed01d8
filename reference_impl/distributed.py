"""Start a torch.distributed group on this machine (127.0.0.1 only), for tests and local launchers.

`free_port` + `init_process_group` are the two calls a spawned worker needs; `run_in_group` spawns
`world_size` processes, runs a function in each and returns the per-rank results (tests use it).
Multi-machine runs go through `torchrun` instead (`init_process_group` from the environment).

Loopback only: the rendezvous store is reached at 127.0.0.1 and gloo's data sockets are pinned to
the loopback interface (GLOO_SOCKET_IFNAME) so nothing leaves the machine even where the host name
resolves to an external address; a GLOO_SOCKET_IFNAME the user set is kept (see pin_gloo_to_loopback).
"""

from __future__ import annotations

import datetime
import os
import queue as queue_lib
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist

LOOPBACK_HOST = "127.0.0.1"
BACKENDS = ("gloo", "nccl")
DEFAULT_TIMEOUT_S = 120.0  # collective/recv timeout; a hung peer fails a test instead of hanging it


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it; tiny race until it is bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK_HOST, 0))
        return int(sock.getsockname()[1])


def _loopback_interface() -> str | None:
    """Name of the loopback interface ("lo" on Linux, "lo0" on macOS), None if neither exists."""
    names = {name for _, name in socket.if_nameindex()}
    return next((n for n in ("lo", "lo0") if n in names), None)


def pin_gloo_to_loopback() -> None:
    """Points gloo's data sockets at the loopback interface, unless the user set GLOO_SOCKET_IFNAME.

    gloo opens one socket per peer on the interface the host name resolves to, which may be an
    external one; for processes of one machine loopback keeps everything on 127.0.0.1. A value the
    user exported wins (it names the interface they want gloo on).
    """
    lo = _loopback_interface()
    if lo is not None:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", lo)


def init_process_group(
    rank: int,
    world_size: int,
    port: int,
    backend: str = "gloo",
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> None:
    """Joins the default process group of `world_size` local processes rendezvousing at 127.0.0.1:`port`.

    Every rank calls it with the same port (rank 0 hosts the TCP store). For "nccl" the caller
    selects its CUDA device first (torch.cuda.set_device).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not supported; valid: {', '.join(BACKENDS)}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1} (world_size {world_size})")
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is not a TCP port (1..65535)")
    pin_gloo_to_loopback()
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://{LOOPBACK_HOST}:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def _group_entry(
    rank: int,
    world_size: int,
    port: int,
    backend: str,
    timeout_s: float,
    torch_threads: int | None,
    fn: Callable[..., Any],
    args: tuple,
    results: Any,
) -> None:
    """Body of one spawned process: join the group, run fn, report (rank, ok, result or traceback)."""
    try:
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        init_process_group(rank, world_size, port, backend=backend, timeout_s=timeout_s)
        try:
            results.put((rank, True, fn(rank, world_size, *args)))
        finally:
            dist.destroy_process_group()
    except BaseException:
        results.put((rank, False, traceback.format_exc()))


def run_in_group(
    fn: Callable[..., Any],
    world_size: int,
    args: Sequence[Any] = (),
    backend: str = "gloo",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    torch_threads: int | None = 1,
) -> list[Any]:
    """Runs fn(rank, world_size, *args) in `world_size` spawned processes joined in one group.

    fn must be importable by the children (a module-level function) and return something picklable.
    Returns the results by rank. As soon as one rank reports a failure the others are killed (they may
    be waiting for it forever) and RuntimeError carries the tracebacks reported so far; TimeoutError if
    they did not all report within timeout_s (the children are killed). `torch_threads` caps each
    child's intra-op threads (None: torch's default).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    ctx = torch.multiprocessing.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    common = (world_size, port, backend, timeout_s, torch_threads, fn, tuple(args), results)
    procs = [
        ctx.Process(target=_group_entry, args=(rank, *common), daemon=True) for rank in range(world_size)
    ]
    for proc in procs:
        proc.start()
    reports: list[tuple[int, bool, Any]] = []
    try:
        _collect_reports(results, world_size, timeout_s, reports)
    finally:
        all_ok = len(reports) == world_size and all(ok for _, ok, _ in reports)
        _stop(procs, grace_s=10.0 if all_ok else 0.0)
    reports.sort(key=lambda r: r[0])
    failures = [f"rank {rank}:\n{payload}" for rank, ok, payload in reports if not ok]
    if failures:
        raise RuntimeError("process group run failed\n" + "\n".join(failures))
    return [payload for _, _, payload in reports]


def _collect_reports(results: Any, world_size: int, timeout_s: float, reports: list) -> None:
    """Appends reports as they arrive until every rank has reported or one reports a failure."""
    deadline = time.monotonic() + timeout_s
    while len(reports) < world_size:
        try:
            reports.append(results.get(timeout=max(0.0, deadline - time.monotonic())))
        except queue_lib.Empty:
            raise TimeoutError(f"{world_size}-process group did not finish within {timeout_s} s") from None
        if not reports[-1][1]:
            return  # a failed rank: the others may block on it until their own timeouts


def _stop(procs: list, grace_s: float) -> None:
    """Joins the processes, killing any still alive after grace_s (0: kill at once)."""
    for proc in procs:
        proc.join(timeout=grace_s)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=10.0)
