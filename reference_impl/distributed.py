"""Start a torch.distributed group on this machine (127.0.0.1 only), for tests and local launchers.

`free_port` + `init_process_group` are the two calls a spawned worker needs; `run_in_group` spawns
`world_size` processes under a `supervisor.Supervisor`, runs a function in each and returns the
per-rank results (the homogeneous engine's tensor parallelism and tests use it): a rank that dies or
hangs ends it at once with WorkerFailure, and no process outlives it. Multi-machine runs go through
`torchrun` instead (`init_process_group` from the environment).

Loopback only: the rendezvous store is reached at 127.0.0.1 and gloo's data sockets are pinned to
the loopback interface (GLOO_SOCKET_IFNAME) so nothing leaves the machine even where the host name
resolves to an external address; a GLOO_SOCKET_IFNAME the user set is kept (see pin_gloo_to_loopback).
"""

from __future__ import annotations

import datetime
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist

from reference_impl.errors import ConfigError, WorkerFailure
from reference_impl.faults import fault_from_env
from reference_impl.supervisor import ERROR_GRACE_S, HEARTBEAT_TIMEOUT_S, Failure, Supervisor

LOOPBACK_HOST = "127.0.0.1"
BACKENDS = ("gloo", "nccl")
DEFAULT_TIMEOUT_S = 120.0  # collective/recv timeout; a hung peer fails a test instead of hanging it
# How long a rank waits for the others at a rendezvous (store gets and waits: a process group forming
# at start-up, or again after a recovery). The slowest rank imports torch, and a replacement loads its
# model shard, meanwhile: seconds here. Separate from the per-message timeouts (DEFAULT_TIMEOUT_S,
# homogeneous.TP_TIMEOUT_S, LaminaConfig.comm_timeout_s), which a long step may need. Under the
# spawning launchers the supervisor ends a run with a dead or silent rank much sooner; this bounds
# the wait where no supervisor watches (torchrun).
GROUP_TIMEOUT_S = 60.0
# After every rank returned its result: how long they may take to leave the group and exit before
# they are killed (leaving takes well under a second).
EXIT_GRACE_S = 10.0


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

    Every rank calls it with the same port (rank 0 hosts the TCP store). The store's rendezvous
    waits at most GROUP_TIMEOUT_S; timeout_s is the collectives' timeout. For "nccl" the caller
    selects its CUDA device first (torch.cuda.set_device).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not supported; valid: {', '.join(BACKENDS)}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1} (world_size {world_size})")
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is not a TCP port (1..65535)")
    pin_gloo_to_loopback()
    store = tcp_store(LOOPBACK_HOST, port, world_size, rank == 0, GROUP_TIMEOUT_S)
    dist.init_process_group(
        backend=backend,
        store=store,
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def tcp_store(host: str, port: int, world_size: int | None, is_master: bool, timeout_s: float) -> dist.Store:
    """A torch.distributed TCPStore at host:port. The hosting rank binds its listening socket to `host`
    itself (torch alone would listen on every interface), so a store at 127.0.0.1 is reachable from this
    machine only."""
    listen_fd = {}
    if is_master:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(max(64, world_size or 0))
        except OSError:
            sock.close()
            raise
        listen_fd = {"master_listen_fd": sock.detach(), "use_libuv": False}  # the store owns the socket now
    return dist.TCPStore(
        host,
        port,
        world_size,
        is_master,
        timeout=datetime.timedelta(seconds=timeout_s),
        wait_for_workers=False,
        **listen_fd,
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
) -> Any:
    """Body of one spawned process (under the supervisor): join the group, run fn, leave the group."""
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    init_process_group(rank, world_size, port, backend=backend, timeout_s=timeout_s)
    try:
        return fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def run_in_group(
    fn: Callable[..., Any],
    world_size: int,
    args: Sequence[Any] = (),
    backend: str = "gloo",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    torch_threads: int | None = 1,
    heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
    describe_rank: Callable[[int], str] | None = None,
) -> list[Any]:
    """Runs fn(rank, world_size, *args) in `world_size` spawned processes joined in one group.

    fn must be importable by the children (a module-level function) and return something picklable.
    Returns the results by rank. The processes run under a `supervisor.Supervisor`: a process that
    dies, or is silent for heartbeat_timeout_s, before it has returned its result ends the run with
    WorkerFailure (one line: describe_rank(rank), what happened, and its stage); a rank that raises
    ends it with RuntimeError carrying its traceback, unless another rank's death caused the error
    (then WorkerFailure names that death); TimeoutError if they did not all finish within timeout_s.
    Whatever happens, every process is killed and reaped before this returns. `torch_threads` caps
    each child's intra-op threads (None: torch's default). A test-only fault can be injected with
    the REFERENCE_IMPL_FAULT environment variable (faults.py).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    port = free_port()
    fault = fault_from_env(world_size)
    results: dict[int, Any] = {}
    with Supervisor(world_size, heartbeat_timeout_s, describe_rank) as supervisor:
        for rank in range(world_size):
            entry_args = (rank, world_size, port, backend, timeout_s, torch_threads, fn, tuple(args))
            own_fault = fault if fault is not None and fault.rank == rank else None
            supervisor.start(rank, _group_entry, entry_args, fault=own_fault)
        deadline = time.monotonic() + timeout_s
        while len(results) < world_size:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{world_size}-process group did not finish within {timeout_s} s")
            for child, event in supervisor.poll():
                if isinstance(event, Failure):
                    raise WorkerFailure(
                        f"{supervisor.describe(event)}; the group cannot go on without it", event
                    )
                if event[0] == "done":
                    results[child.rank] = event[1]
                elif event[0] == "error":
                    raise _error_of(supervisor, child.rank, event)
        supervisor.close(grace_s=EXIT_GRACE_S)
    return [results[rank] for rank in range(world_size)]


def _error_of(supervisor: Supervisor, rank: int, event: tuple) -> Exception:
    """The exception for a rank that raised: its peer's death if one caused it, else its traceback."""
    _, category, line, trace = event
    supervisor.watch_for(ERROR_GRACE_S)
    deaths = [f for f in supervisor.failures if f.rank != rank]
    if deaths:
        return WorkerFailure(
            f"{supervisor.describe(deaths[0])}; the group cannot go on without it", deaths[0]
        )
    if category == "config":
        return ConfigError(line)
    if category == "failure":
        return WorkerFailure(line)
    return RuntimeError(f"process group run failed\nrank {rank}:\n{trace}")
