"""Command line of the Lamina runtime: spawn every rank on this machine, or serve one rank under torchrun.

    python -m reference_impl.lamina --model-dir DIR --prompts FILE.jsonl --compute-workers 1 --attention-workers 2
    torchrun --nproc-per-node 3 -m reference_impl.lamina --model-dir DIR --prompts FILE.jsonl --attention-workers 2

Without torchrun, the command spawns A + B (+ P prefill) processes on this machine (127.0.0.1); under
torchrun (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set; WORLD_SIZE must be A + B + P) each process
serves its rank and the ranks may span machines (set GLOO_SOCKET_IFNAME to the interface gloo should
use there).
Rank 0 prints one JSON line per request on stdout and the run's summary on stderr. Bad input ends
with one line on stderr and exit code 2; a worker process that died or hung, with one line and exit
code 1 (the spawning launcher: within the heartbeat timeout, every process stopped first).
"""

from __future__ import annotations

import argparse
import os
import sys

from reference_impl.checkpoint import read_config
from reference_impl.errors import ConfigError, WorkerFailure
from reference_impl.lamina.config import LaminaConfig, check_model
from reference_impl.lamina.fabric import StoreAddress
from reference_impl.lamina.launch import generate_lamina, serve_rank
from reference_impl.lamina.results import LaminaRun
from reference_impl.options import add_generate_arguments, config_from_args
from reference_impl.prompts import print_completions, read_prompts

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
    rank, world, master_addr, master_port = _torchrun_env()
    if world != cfg.layout.world_size:
        raise ConfigError(
            f"torchrun started {world} processes, but {cfg.compute_workers} compute + {cfg.attention_workers} "
            f"attention{f' + {cfg.prefill_workers} prefill' if cfg.prefill_workers else ''} workers need "
            f"{cfg.layout.world_size}"
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
    parser = argparse.ArgumentParser(
        prog="python -m reference_impl.lamina", description=__doc__.splitlines()[0]
    )
    add_generate_arguments(parser, systems=("lamina",))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(LaminaConfig, args)
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            run = _torchrun_rank(cfg, args.prompts)
        elif cfg.launcher == "ray":
            from reference_impl.lamina.ray_launch import RayPlacement, generate_lamina_ray

            placement = RayPlacement.from_options(args.ray_address, args.ray_devices)
            run = generate_lamina_ray(cfg, read_prompts(args.prompts), placement)
        else:
            run = generate_lamina(cfg, read_prompts(args.prompts))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except WorkerFailure as exc:  # a process died or hung: every process is gone already
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; every worker process was stopped", file=sys.stderr)
        return 130
    if run is None:
        return 0  # a worker rank under torchrun: rank 0 prints
    print_completions(run.completions, run.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
