"""The `generate` command line, written once: its options, with defaults read off the config dataclasses.

`lamina-bench generate` (every system), `python -m reference_impl.launch` (homogeneous) and
`python -m reference_impl.lamina` (Lamina) add these options with `add_generate_arguments` and turn
the parsed arguments into a GenerateConfig, LaminaConfig or AFDConfig with `config_from_args`. The
options the systems share have the same defaults in their dataclasses.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any, TypeVar

from reference_impl.afd.config import AFDConfig
from reference_impl.config import GenerateConfig
from reference_impl.lamina.config import LaminaConfig
from reference_impl.scheduling import VLLM_MAX_NUM_BATCHED_TOKENS, VLLM_MAX_NUM_SEQS

SYSTEMS = ("homogeneous", "lamina", "afd")
Config = TypeVar("Config", GenerateConfig, LaminaConfig, AFDConfig)


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
        add("--system", default=homogeneous["system"], help="homogeneous (baseline) | lamina | afd")
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
            help="lamina: attention processes (KV head ranges); afd: attention processes (requests split)",
        )
        add(
            "--pipeline-batches",
            type=int,
            default=lamina["pipeline_batches"],
            help="lamina: 1 none, 2 ping-pong, n rotational; afd: 1 none, 2 ping-pong",
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
        add("--launcher", default=lamina["launcher"], help="lamina: processes | threads | ray (Ray actors)")
        add(
            "--ray-address",
            help="lamina --launcher ray: HOST:PORT of the Ray head (default: a private cluster)",
        )
        add(
            "--ray-devices",
            help="lamina --launcher ray: device types as custom resources, compute=H100,attention=H20",
        )
    if "afd" in systems:
        add(
            "--expert-workers",
            type=int,
            default=defaults(AFDConfig)["expert_workers"],
            help="afd: expert processes, each holding a range of the routed experts",
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
    add(
        "--scheduler",
        default=homogeneous["scheduler"],
        help="reserve-all (prompt + all output reserved at admission) | vllm (KV blocks allocated as "
        "written, preemption by recompute)",
    )
    add(
        "--max-num-seqs",
        type=int,
        default=homogeneous["max_num_seqs"],
        help=f"vllm: cap on running requests (default {VLLM_MAX_NUM_SEQS}, vLLM's)",
    )
    add(
        "--max-num-batched-tokens",
        type=int,
        default=homogeneous["max_num_batched_tokens"],
        help=f"vllm: tokens computed per iteration (default {VLLM_MAX_NUM_BATCHED_TOKENS}, vLLM's)",
    )
    add("--attention-backend", default=homogeneous["attention_backend"], help="auto | torch | triton")
    add(
        "--heartbeat-timeout",
        dest="heartbeat_timeout_s",
        type=float,
        default=homogeneous["heartbeat_timeout_s"],
        help="seconds without a heartbeat after which a worker process counts as hung (lamina, afd; --tp > 1)",
    )


def config_from_args(cls: type[Config], args: argparse.Namespace) -> Config:
    """A GenerateConfig, LaminaConfig or AFDConfig from parsed `generate` options (fields without an
    option keep their default)."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})
