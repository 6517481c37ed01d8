"""A Ray cluster on 127.0.0.1 for tests: a head and one more node process, each with its own custom
resources, shared by every Ray test of a session (Ray starts slowly on small machines).

    head     2 CPUs, {"H100": 4}   the "compute" node type
    node     2 CPUs, {"H20": 4}    the "attention" node type
Both listen on 127.0.0.1 only, without a dashboard. `add_node` starts a further node process (a test
that kills one starts its own); `shutdown` stops every process of the cluster.

`held_on(node_id, gate)` is a sweep task body that holds a task on one node until the node is killed.
`without_ray(*argv)` runs the CLI in a fresh Python where importing Ray fails, and counts the attempts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from reference_impl.ray_cluster import stay_on_loopback

REPO = Path(__file__).resolve().parents[1]
HEAD_RESOURCES = {"H100": 4.0}
NODE_RESOURCES = {"H20": 4.0}
NODE_ARGS = {"node_ip_address": "127.0.0.1", "include_dashboard": False}
# A node that went away is declared dead after ~3 missed 1 s health checks (Ray's defaults: 5 x 3 s,
# after 5 s), so the tests that kill one wait seconds, not half a minute.
HEALTH_CHECKS = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 1000,
                 "health_check_timeout_ms": 2000, "health_check_failure_threshold": 3}  # fmt: skip


@dataclass
class LocalCluster:
    cluster: object  # ray.cluster_utils.Cluster

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_node(self, **options):
        node = self.cluster.add_node(**NODE_ARGS, **options)
        self.cluster.wait_for_nodes()
        return node

    def remove_node(self, node) -> None:
        self.cluster.remove_node(node, allow_graceful=False)  # SIGKILL, as a machine that goes away

    def pids(self) -> set[int]:
        """Every process of every node of the cluster (raylets, GCS, their agents)."""
        out = set()
        for node in self.cluster.list_all_nodes():
            for infos in node.all_processes.values():
                out.update(info.process.pid for info in infos)
        return out

    def shutdown(self) -> None:
        self.cluster.shutdown()


def start_cluster() -> LocalCluster:
    stay_on_loopback()
    from ray.cluster_utils import Cluster

    head = {**NODE_ARGS, "num_cpus": 2, "resources": HEAD_RESOURCES, "_system_config": HEALTH_CHECKS}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    local = LocalCluster(cluster)
    local.add_node(num_cpus=2, resources=NODE_RESOURCES)
    os.environ.pop("RAY_ADDRESS", None)  # the address is always passed explicitly
    return local


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def _hex_address(text: str) -> str:
    """/proc/net/tcp's little-endian hex address -> dotted IPv4, or the IPv6 words as hex."""
    if len(text) == 8:
        return ".".join(str(int(text[i : i + 2], 16)) for i in (6, 4, 2, 0))
    words = [text[i : i + 8] for i in range(0, 32, 8)]
    return ":".join(w[6:8] + w[4:6] + w[2:4] + w[0:2] for w in words)


def is_loopback_hex(address: str) -> bool:
    """127.0.0.0/8, ::1, or ::ffff:127.x.x.x (an IPv4 loopback on an IPv6 socket)."""
    address = address.lower()
    if "." in address:
        return address.startswith("127.")
    return address == "00000000:00000000:00000000:00000001" or (
        address.startswith("00000000:00000000:0000ffff:7f")
    )


def listening_addresses(pids: set[int]) -> dict[int, set[str]]:
    """pid -> local addresses of the TCP sockets it listens on."""
    owner = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
    out: dict[int, set[str]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            next(handle)
            for line in handle:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and inode in owner:  # 0A: LISTEN
                    out.setdefault(owner[inode], set()).add(_hex_address(local.split(":")[0]))
    return out


def descendants(pids: set[int]) -> set[int]:
    """`pids` and every process below them (workers a raylet started, their children)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, grew = set(pids) & set(parents), True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in found} - found
        found |= more
        grew = bool(more)
    return found


def command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (dead, waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


_NO_RAY = """
import sys

class NoRay:
    attempts = []
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            NoRay.attempts.append(name)
            raise ImportError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, NoRay())
from lamina_bench.cli import main
rc = main(sys.argv[1:])
print("RAY-IMPORTS", len(NoRay.attempts), sum(m == "ray" or m.startswith("ray.") for m in sys.modules))
sys.exit(rc)
"""


def without_ray(*argv: str) -> subprocess.CompletedProcess:
    """`lamina-bench ARGV` where Ray cannot be imported; stdout ends with "RAY-IMPORTS <attempts> <loaded>"."""
    return subprocess.run([sys.executable, "-c", _NO_RAY, *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def exit_once(marker: str, value):
    """`value`, except in the first call of all (the one that creates the file `marker`), which ends its
    own process at once, as a worker whose machine goes away."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))  # exactly one caller creates it
    except FileExistsError:
        return value
    os._exit(1)


def exit_always(value):
    """Ends its own process at once, every time."""
    os._exit(1)


def held_on(node_id: str, gate: str):
    """A sweep task body (ray_executor.run_points, then the same) that first records where it runs (an
    empty file `<node id>-<pid>` in folder `gate`); on node `node_id` it then waits for its process to be
    killed, elsewhere for the file `gate/killed` (at most 60 s) before it runs its points. With more tasks
    than the other nodes have CPUs, some task is surely held on node `node_id` when the test kills it."""

    def body(points, job):
        import ray

        from lamina_bench.sweep.ray_executor import run_points

        here = ray.get_runtime_context().get_node_id()
        Path(gate, f"{here}-{os.getpid()}").touch()
        if here == node_id:
            time.sleep(120)  # killed with its node long before
            raise RuntimeError(f"node {node_id} was not killed")
        deadline = time.monotonic() + 60
        while not Path(gate, "killed").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return run_points(points, job)

    return body
