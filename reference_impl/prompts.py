"""What a run serves and how it samples: prompt files in, completions out (JSONL), the vocabulary check,
the checkpoint's eos ids."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from reference_impl.checkpoint import read_json_object
from reference_impl.engine import Completion, Request, SamplingParams
from reference_impl.errors import ConfigError


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


def print_completions(completions: Sequence[Completion], summary: dict) -> None:
    """One JSON line per request on stdout, in input order, then the summary line on stderr."""
    for c in completions:
        print(json.dumps({"prompt_ids": list(c.prompt_ids), "output_ids": list(c.output_ids)}))
    print(json.dumps({"summary": summary}), file=sys.stderr)


def _is_int(value: object) -> bool:
    """A JSON integer: not a float such as 3.7 or 3.0, not true/false (bool is an int in Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def stop_token_ids(model_dir: str | Path) -> tuple[int, ...]:
    """The checkpoint's end-of-sequence ids (generation_config.json, else config.json)."""
    for name in ("generation_config.json", "config.json"):
        path = Path(model_dir) / name
        if not path.is_file():
            continue
        eos = read_json_object(path).get("eos_token_id")
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
