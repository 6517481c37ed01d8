"""How a rank reaches the others: a process group per epoch (processes), or in-process queues (threads).

Recovery needs fresh groups: gloo groups cannot re-admit a process, so the processes launcher uses one
TCP store for the whole run and a fresh default process group per *epoch* (keys prefixed
`epoch<e>/`). `ProcessFabric.regroup` leaves the current group and joins the next epoch's once rank 0
says every live rank has consumed the old epoch's messages. `ThreadFabric` serves the threads
launcher: one process, no recovery, no tensor parallelism.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist

from reference_impl.distributed import GROUP_TIMEOUT_S, tcp_store
from reference_impl.errors import WorkerFailure
from reference_impl.lamina.clock import WorkerClock
from reference_impl.lamina.layout import Layout
from reference_impl.lamina.links import Links
from reference_impl.lamina.results import add_traffic, sent_by_kind
from reference_impl.transport import TorchDistTransport

_RETIRE_SEND_TIMEOUT_S = 5.0  # leaving a group after a failure: sends to a dead peer never complete


@dataclass(frozen=True)
class StoreAddress:
    """Where the run's TCP store lives (served by rank 0, or by torchrun's agent); keys get `prefix`."""

    host: str
    port: int
    prefix: str = "lamina/"


def connect_store(address: StoreAddress, host_it: bool, timeout_s: float) -> dist.Store:
    store = tcp_store(address.host, address.port, None, host_it, timeout_s)
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
            self.store.wait([key], datetime.timedelta(seconds=GROUP_TIMEOUT_S))
        self._retire()
        self.join(epoch)

    def _retire(self) -> None:
        add_traffic(self._retired, sent_by_kind(self.transport))
        with contextlib.suppress(RuntimeError, TimeoutError):  # a send to a dead peer; the group goes next
            self.transport.close(timeout_s=_RETIRE_SEND_TIMEOUT_S)
        dist.destroy_process_group()
        self.transport = None

    def traffic(self) -> dict[str, list[int]]:
        """kind -> [messages, payload bytes, header bytes] sent by this process over the whole run."""
        out = {k: list(v) for k, v in self._retired.items()}
        add_traffic(out, sent_by_kind(self.transport))
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
        raise WorkerFailure("a worker failed; recovery needs the processes launcher")

    def traffic(self) -> dict[str, list[int]]:
        return sent_by_kind(self.transport)

    def close(self) -> None:
        return None
