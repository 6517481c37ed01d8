"""The `generate` command line, written once: its options, with defaults read off the config dataclasses.

`lamina-bench generate` (both systems), `python -m reference_impl.launch` (homogeneous) and
`python -m reference_impl.lamina` (Lamina) add these options with `add_generate_arguments` and turn
the parsed arguments into a GenerateConfig or LaminaConfig with `config_from_args`. The engine options
both systems share have the same defaults in both dataclasses.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any, TypeVar

from reference_impl.config import GenerateConfig
from reference_impl.lamina.config import LaminaConfig

SYSTEMS = ("homogeneous", "lamina")
Config = TypeVar("Config", GenerateConfig, LaminaConfig)


def defaults(cls: type) -> dict[str, Any]:
    """Field name -> default of a config dataclass (fields without a default are left out)."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def add_generate_arguments(parser: argparse.ArgumentParser, systems: Sequence[str] = SYSTEMS) -> None:
    """Adds the options of `generate` for `systems` (--system and --tp come with the homogeneous one)."""
    homogeneous, lamina = defaults(GenerateConfig), defaults(LaminaConfig)
    add = parser.add_argument
    add("--model-dir", required=True, help="Hugging Face checkpoint folder (config.json + safetensors)")
    add("--prompts", required=True, help='JSONL prompt file, one {"prompt_ids": [...], "max_new_tokens": N}')
    if "homogeneous" in systems:
        add("--system", default=homogeneous["system"], help="homogeneous (baseline) | lamina")
        add(
            "--tp",
            type=int,
            default=homogeneous["tp"],
            help="homogeneous: tensor-parallel processes for the dense part",
        )
    if "lamina" in systems:
        add(
            "--compute-workers",
            type=int,
            default=lamina["compute_workers"],
            help="lamina: compute processes (replicas x TP)",
        )
        add(
            "--attention-workers",
            type=int,
            default=lamina["attention_workers"],
            help="lamina: attention processes (KV head ranges)",
        )
        add(
            "--pipeline-batches",
            type=int,
            default=lamina["pipeline_batches"],
            help="lamina: 1 none, 2 ping-pong, n rotational",
        )
        add(
            "--prefill-workers",
            type=int,
            default=lamina["prefill_workers"],
            help="lamina: prefill processes, each with the whole model (0: the compute worker prefills)",
        )
        add(
            "--attention-split",
            action="store_true",
            default=lamina["attention_split"],
            help="lamina: merge the new token's k/v after",
        )
    add("--device", default=homogeneous["device"], help="cpu | cuda")
    add("--dtype", default=homogeneous["dtype"], help="fp32 | fp16 | bf16")
    add("--temperature", type=float, default=homogeneous["temperature"], help="0 = greedy")
    add("--seed", type=int, default=homogeneous["seed"])
    add(
        "--ignore-eos",
        action="store_true",
        default=homogeneous["ignore_eos"],
        help="always generate max_new_tokens",
    )
    add("--block-size", type=int, default=homogeneous["block_size"], help="KV cache block size in tokens")
    add(
        "--num-blocks",
        type=int,
        default=homogeneous["num_blocks"],
        help="KV cache blocks (default: enough for all requests at once)",
    )
    add("--max-batch-size", type=int, default=homogeneous["max_batch_size"], help="cap on running requests")
    add("--attention-backend", default=homogeneous["attention_backend"], help="auto | torch | triton")
    add(
        "--heartbeat-timeout",
        dest="heartbeat_timeout_s",
        type=float,
        default=homogeneous["heartbeat_timeout_s"],
        help="seconds without a heartbeat after which a worker process counts as hung (lamina; --tp > 1)",
    )


def config_from_args(cls: type[Config], args: argparse.Namespace) -> Config:
    """A GenerateConfig or LaminaConfig from parsed `generate` options (fields without an option keep
    their default)."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})
