"""The Ray launcher: every rank of a Lamina run a Ray actor, placed by device type, with recovery.

`generate_lamina_ray(cfg, requests, placement)` is `generate --system lamina --launcher ray`:
1. one placement group with a bundle per rank: 1 CPU, 1 GPU on CUDA, and one unit of the custom
   resource that names the rank's device type when given (placement.devices, e.g. compute ranks on
   nodes started with `--resources '{"H100": 8}'`, attention ranks on `'{"H20": 8}'`); strategy PACK
   (as few nodes as fit);
2. an actor per rank in its bundle; rank 0's actor picks a port on its node, where it hosts the run's
   TCP store, and every actor runs `launch.serve_rank` for its rank: the same torch.distributed group
   per epoch as the spawning launcher (gloo on CPU, NCCL on GPU; Ray hands each actor its GPU);
3. recovery as with the spawning launcher (recovery.py): rank 0 finds a dead attention worker on its
   links, kills its actor (RayFabric.kill), starts a replacement actor in the same bundle (the dead
   actor's resources come back to it) and redoes the step, so the tokens do not change;
4. rank 0's run is the result; every actor, replacements included, and the placement group are gone
   when the call returns or raises.

Faults the spawning launcher's supervisor sees at once (a hung process, a death during start-up) show
here through rank 0: a dead peer on its links, or the store's rendezvous timing out (GROUP_TIMEOUT_S).
A cluster without room for the bundles is a one-line ConfigError after PLACEMENT_TIMEOUT_S.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

from reference_impl.checkpoint import read_config
from reference_impl.distributed import free_port, pin_gloo_to_loopback
from reference_impl.engine import Request
from reference_impl.errors import ConfigError, WorkerFailure
from reference_impl.lamina.config import LaminaConfig, check_model
from reference_impl.lamina.fabric import ProcessFabric, StoreAddress
from reference_impl.lamina.launch import serve_rank
from reference_impl.lamina.layout import ATTENTION
from reference_impl.lamina.results import LaminaRun
from reference_impl.prompts import check_vocab
from reference_impl.ray_cluster import check_address, connect, is_loopback, parse_devices, require_ray

PLACEMENT_TIMEOUT_S = 120.0  # waiting for the cluster to hold every bundle (nodes may still be joining)
SHUTDOWN_GRACE_S = 10.0  # after rank 0 returned: the other actors leave their groups and return


@dataclass(frozen=True)
class RayPlacement:
    """Where the actors go: the cluster (None: a private one on 127.0.0.1), and per role the custom
    resource naming its device type ({"compute": "H100", "attention": "H20"}; empty: any node)."""

    address: str | None = None
    devices: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_options(cls, address: str | None, devices: str | None) -> RayPlacement:
        """From --ray-address and --ray-devices; ConfigError when Ray is not installed or one is bad."""
        require_ray("--launcher ray")
        check_address(address, "--ray-address")
        return cls(address, parse_devices(devices))


def bundles(cfg: LaminaConfig, placement: RayPlacement) -> list[dict[str, float]]:
    """One bundle per rank, in rank order: what its actor holds."""
    layout, out = cfg.layout, []
    for rank in range(layout.world_size):
        role = "attention" if layout.role(rank) == ATTENTION else "compute"  # prefill: dense weights
        bundle = {"CPU": 1.0} | ({"GPU": 1.0} if cfg.device == "cuda" else {})
        if role in placement.devices:
            bundle[placement.devices[role]] = 1.0
        out.append(bundle)
    return out


class RayFabric(ProcessFabric):
    """ProcessFabric whose kill ends a rank's actor through Ray (ranks may run on other machines)."""

    def __init__(self, *args, actors: dict | None = None) -> None:
        super().__init__(*args)
        self.actors = actors if actors is not None else {}

    def kill(self, rank: int) -> None:
        import ray

        with contextlib.suppress(ValueError):  # not an actor any more
            ray.kill(self.actors[rank], no_restart=True)


class RankActor:
    """One rank's process (made a Ray actor class by `_actor_class`)."""

    def node_store_address(self) -> tuple[str, int]:
        """This node's address and a free port on it, where rank 0 hosts the run's TCP store."""
        import ray

        return ray.util.get_node_ip_address(), free_port()

    def pid(self) -> int:
        return os.getpid()

    def serve(
        self,
        rank: int,
        cfg: LaminaConfig,
        requests: list[Request] | None,
        address: StoreAddress,
        epoch: int,
        actors: dict | None = None,
        group=None,
    ) -> LaminaRun | None:
        """launch.serve_rank for `rank`; rank 0 gets the actors (to kill and replace) and the group."""
        if is_loopback(f"{address.host}:0"):
            pin_gloo_to_loopback()
        respawn = None
        if rank == 0:
            respawn = partial(_respawn, cfg, address, actors, group, [])
        fabric = partial(RayFabric, actors=actors)
        host_store = rank == 0 and epoch == 0
        return serve_rank(
            rank, cfg, requests, address, epoch, host_store, threads=1, local=False, respawn=respawn,
            make_fabric=fabric,
        )  # fmt: skip


def _actor_class():
    import ray

    return ray.remote(max_restarts=0, max_concurrency=2)(RankActor)  # serve, and a pid query meanwhile


def _start_actor(group, rank: int, bundle: dict[str, float]):
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    custom = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")}
    strategy = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=rank)
    return (
        _actor_class()
        .options(
            num_cpus=bundle["CPU"],
            num_gpus=bundle.get("GPU", 0.0),
            resources=custom,
            scheduling_strategy=strategy,
        )
        .remote()
    )


def _respawn(
    cfg: LaminaConfig, address: StoreAddress, actors: dict, group, runs: list, ranks: list[int], epoch: int
) -> None:
    """Rank 0's respawn: a replacement actor per dead rank, in that rank's bundle, joining at `epoch`
    (the dead actor was killed first, so its bundle's resources come back); `runs` keeps their serve
    calls' references."""
    for rank in ranks:
        actors[rank] = _start_actor(group, rank, group.bundle_specs[rank])
        runs.append(actors[rank].serve.remote(rank, cfg, None, address, epoch))


def generate_lamina_ray(
    cfg: LaminaConfig, requests: Sequence[Request], placement: RayPlacement | None = None
) -> LaminaRun:
    """Serves `requests` with A compute + B attention actors on a Ray cluster (module docstring)."""
    require_ray("--launcher ray")
    placement = placement or RayPlacement()
    requests = list(requests)
    if not requests:
        raise ConfigError("no requests to serve")
    model_cfg = read_config(cfg.model_dir)
    check_model(cfg, model_cfg)
    check_vocab(requests, model_cfg.vocab_size)  # before any actor starts
    with connect(placement.address):
        return _run(cfg, requests, bundles(cfg, placement))


def _run(cfg: LaminaConfig, requests: list[Request], specs: list[dict[str, float]]) -> LaminaRun:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    group = placement_group(specs, strategy="PACK")
    actors: dict = {}
    try:
        try:
            ray.get(group.ready(), timeout=PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise ConfigError(
                f"the Ray cluster has no room for the run's {len(specs)} workers {specs} after "
                f"{PLACEMENT_TIMEOUT_S:.0f} s; start nodes with those resources (README: Ray)"
            ) from None
        actors.update({rank: _start_actor(group, rank, spec) for rank, spec in enumerate(specs)})
        host, port = ray.get(actors[0].node_store_address.remote())
        address = StoreAddress(host, port)
        rank0 = actors[0].serve.remote(0, cfg, requests, address, 0, actors, group)
        others = [actors[r].serve.remote(r, cfg, None, address, 0) for r in range(1, len(specs))]
        run = _result(rank0)
        ray.wait(others, num_returns=len(others), timeout=SHUTDOWN_GRACE_S)
        return run
    finally:
        for actor in actors.values():
            with contextlib.suppress(Exception):  # dead already
                ray.kill(actor, no_restart=True)
        remove_placement_group(group)  # ends every actor placed in it (replacements too)


def _result(rank0) -> LaminaRun:
    """Rank 0's run; its error as the spawning launcher reports it (bad input: ConfigError; a dead or
    failed worker: WorkerFailure, one line)."""
    import ray

    try:
        return ray.get(rank0)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, (ConfigError, WorkerFailure)):
            raise cause from None
        raise WorkerFailure(
            f"rank 0 (scheduler and compute worker) failed: {_first_line(cause or exc)}"
        ) from None
    except ray.exceptions.RayError as exc:
        raise WorkerFailure(f"rank 0 (scheduler and compute worker) was lost: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]
