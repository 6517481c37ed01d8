"""Entry point of the reference implementation: serve a prompt file with either system.

    python -m reference_impl.launch --model-dir DIR --prompts FILE.jsonl [--system homogeneous] [--tp 2]

One process serves everything for `--tp 1`; with `--tp N` it spawns N processes joined by
torch.distributed (gloo on CPU, NCCL on CUDA) on 127.0.0.1. `lamina-bench generate` calls `generate`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from reference_impl.attention import BACKENDS, resolve_backend
from reference_impl.engine import (
    Engine,
    EngineRun,
    HomogeneousExecutor,
    Request,
    SamplingParams,
    blocks_for_requests,
)
from reference_impl.errors import ConfigError
from reference_impl.kv_cache import DEFAULT_BLOCK_SIZE

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SYSTEMS = ("homogeneous",)
TP_TIMEOUT_S = 3600.0  # a whole generation must finish within this (also the collectives' timeout)


@dataclass(frozen=True)
class GenerateConfig:
    model_dir: str
    system: str = "homogeneous"
    tp: int = 1
    device: str = "cpu"
    dtype: str = "fp32"
    block_size: int = DEFAULT_BLOCK_SIZE
    num_blocks: int | None = None  # None: enough for every request at once
    max_batch_size: int | None = None
    temperature: float = 0.0
    seed: int = 0
    ignore_eos: bool = False
    attention_backend: str = "auto"  # one of attention.BACKENDS

    def __post_init__(self) -> None:
        if self.system not in SYSTEMS:
            raise ConfigError(f"unknown system {self.system!r}; valid: {', '.join(SYSTEMS)}")
        check_common_options(
            self.device, self.dtype, self.block_size, self.num_blocks, self.attention_backend
        )
        if self.tp < 1:
            raise ConfigError(f"--tp must be >= 1, got {self.tp}")
        if self.device == "cuda" and self.tp > torch.cuda.device_count():
            raise ConfigError(f"--tp {self.tp} needs {self.tp} GPUs, torch sees {torch.cuda.device_count()}")


# The Triton paged decode kernel takes one page as one tile of keys (attention/triton_decode.py).
TRITON_BLOCK_SIZES = (16, 256)


def check_common_options(
    device: str, dtype: str, block_size: int, num_blocks: int | None, attention_backend: str
) -> None:
    """ConfigError for options both systems share (GenerateConfig and lamina.LaminaConfig)."""
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {device!r}; valid: cpu, cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
    if block_size < 1 or block_size & (block_size - 1):
        raise ConfigError(f"--block-size must be a power of two, got {block_size}")
    if num_blocks is not None and num_blocks < 1:
        raise ConfigError(f"--num-blocks must be >= 1, got {num_blocks}")
    if attention_backend not in BACKENDS:
        raise ConfigError(f"unknown attention backend {attention_backend!r}; valid: {', '.join(BACKENDS)}")
    low, high = TRITON_BLOCK_SIZES
    if resolve_backend(attention_backend, torch.device(device)) == "triton" and not low <= block_size <= high:
        raise ConfigError(
            f"the triton attention backend needs --block-size in {low}..{high}, got {block_size} "
            "(or choose the torch backend)"
        )


def read_prompts(path: str | Path) -> list[Request]:
    """JSONL, one `{"prompt_ids": [...], "max_new_tokens": N}` per line (optional `arrival_step`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"prompt file {path} does not exist")
    requests = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            ids = obj["prompt_ids"]
            if not isinstance(ids, list) or not all(_is_int(t) and t >= 0 for t in ids):
                raise ValueError("prompt_ids must be a list of non-negative integers")
            for key in ("max_new_tokens", "arrival_step"):
                if not _is_int(obj.get(key, 0)):
                    raise ValueError(f"{key} must be an integer, got {obj[key]!r}")
            requests.append(
                Request(
                    request_id=len(requests),
                    prompt_ids=tuple(ids),
                    max_new_tokens=obj["max_new_tokens"],
                    arrival_step=obj.get("arrival_step", 0),
                )
            )
        except ConfigError as exc:
            raise ConfigError(f"{path}:{lineno}: {exc}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f'{path}:{lineno}: expected {{"prompt_ids": [ints], "max_new_tokens": N}}, got error {exc!r}'
            ) from None
    if not requests:
        raise ConfigError(f"prompt file {path} holds no prompts")
    return requests


def _is_int(value: object) -> bool:
    """A JSON integer: not a float such as 3.7 or 3.0, not true/false (bool is an int in Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def stop_token_ids(model_dir: str | Path) -> tuple[int, ...]:
    """The checkpoint's end-of-sequence ids (generation_config.json, else config.json)."""
    for name in ("generation_config.json", "config.json"):
        path = Path(model_dir) / name
        if not path.is_file():
            continue
        try:
            obj = json.loads(path.read_text())
        except ValueError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        eos = obj.get("eos_token_id")
        if eos is None:
            continue
        ids = eos if isinstance(eos, list) else [eos]
        if not all(_is_int(t) and t >= 0 for t in ids):
            raise ConfigError(
                f"{path}: eos_token_id must be a non-negative integer or a list of them, got {eos!r}"
            )
        return tuple(ids)
    return ()


class SamplingOptions(Protocol):
    """The sampling fields GenerateConfig and lamina.LaminaConfig share."""

    model_dir: str
    temperature: float
    seed: int
    ignore_eos: bool


def sampling_params(cfg: SamplingOptions) -> SamplingParams:
    """Sampling of a run: the checkpoint's eos ids stop a request unless cfg.ignore_eos."""
    stops = () if cfg.ignore_eos else stop_token_ids(cfg.model_dir)
    return SamplingParams(temperature=cfg.temperature, seed=cfg.seed, stop_token_ids=stops)


def check_vocab(requests: Sequence[Request], vocab_size: int) -> None:
    """ConfigError if a prompt holds a token id outside the model's vocabulary."""
    for r in requests:
        bad = [t for t in r.prompt_ids if t >= vocab_size]
        if bad:
            raise ConfigError(
                f"request {r.request_id}: token id {bad[0]} is outside the vocabulary (size {vocab_size})"
            )


def serve_homogeneous(
    cfg: GenerateConfig, requests: list[Request], tp_rank: int = 0, group=None, device: str | None = None
) -> EngineRun:
    """Loads this rank's shard and serves every request; every rank of a TP group calls this."""
    from reference_impl.checkpoint import load_model

    model = load_model(
        cfg.model_dir,
        device=device or cfg.device,
        dtype=DTYPES[cfg.dtype],
        tp_rank=tp_rank,
        tp_size=cfg.tp,
        group=group,
    )
    check_vocab(requests, model.config.vocab_size)
    num_blocks = cfg.num_blocks or blocks_for_requests(requests, cfg.block_size)
    executor = HomogeneousExecutor(
        model, num_blocks=num_blocks, block_size=cfg.block_size, backend=cfg.attention_backend, group=group
    )
    return Engine(executor, sampling_params(cfg), max_batch_size=cfg.max_batch_size).run(requests)


def generate(cfg: GenerateConfig, requests: list[Request]) -> EngineRun:
    """Serves `requests` with the configured system; spawns TP processes when cfg.tp > 1."""
    if cfg.tp == 1:
        return serve_homogeneous(cfg, requests)
    return _spawn_tp(cfg, requests)


# ---- tensor parallelism over local processes -------------------------------------------------------


def _tp_rank(rank: int, world_size: int, cfg: GenerateConfig, requests: list[Request]):
    """Body of one tensor-parallel process (run by distributed.run_in_group)."""
    import torch.distributed as dist

    device = "cpu"
    if cfg.device == "cuda":
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    try:
        run = serve_homogeneous(cfg, requests, tp_rank=rank, group=dist.group.WORLD, device=device)
    except ConfigError as exc:  # every rank hits the same bad input; report it as one line
        return ("config", str(exc))
    return ("ok", run if rank == 0 else None)


def _spawn_tp(cfg: GenerateConfig, requests: list[Request]) -> EngineRun:
    from reference_impl.distributed import run_in_group

    results = run_in_group(
        _tp_rank,
        cfg.tp,
        args=(cfg, requests),
        backend="nccl" if cfg.device == "cuda" else "gloo",
        timeout_s=TP_TIMEOUT_S,
        torch_threads=max(1, (os.cpu_count() or 1) // cfg.tp),
    )
    for status, payload in results:
        if status == "config":
            raise ConfigError(payload)
    return results[0][1]


# ---- output ------------------------------------------------------------------------------------------


def run_summary(run: EngineRun) -> dict:
    """Timing summary of a run (measured on this machine), for --json output."""
    decode_tok_per_s = run.decode_tokens / run.decode_s if run.decode_s > 0 else math.nan
    return {
        "source": "measured",
        "requests": len(run.completions),
        "generated_tokens": run.generated_tokens,
        "iterations": len(run.iterations),
        "wall_s": run.wall_s,
        "decode_tokens": run.decode_tokens,
        "decode_s": run.decode_s,
        "decode_tok_per_s": decode_tok_per_s,
        "mean_decode_batch": run.mean_decode_batch,
        "max_waiting": max(it.waiting for it in run.iterations),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reference_impl.launch", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--prompts", required=True)
    parser.add_argument("--system", default="homogeneous", choices=SYSTEMS)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    args = parser.parse_args(argv)
    try:
        cfg = GenerateConfig(
            model_dir=args.model_dir, system=args.system, tp=args.tp, device=args.device, dtype=args.dtype
        )
        run = generate(cfg, read_prompts(args.prompts))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for c in run.completions:
        print(json.dumps({"prompt_ids": list(c.prompt_ids), "output_ids": list(c.output_ids)}))
    print(json.dumps({"summary": run_summary(run)}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
