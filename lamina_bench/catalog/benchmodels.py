"""Small models with random weights for measured runs on machines without real checkpoints.

No weights can be downloaded, so measured sweeps on this machine run models whose shapes are real
decoder shapes scaled down, with seeded random weights, written as ordinary Hugging Face checkpoint
folders (config.json + safetensors) and loaded through the same code path as a real checkpoint.
Tokens from random weights are meaningless; times and bytes are what matter here.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from lamina_bench.errors import UserInputError

# HF config.json fields of each bench model (LlamaForCausalLM / OPTForCausalLM layouts).
BENCH_MODELS: dict[str, dict] = {
    "bench-llama-gqa": {  # Llama-3-style GQA (G = 4), SwiGLU, RMSNorm; ~22 M parameters
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 512,
        "intermediate_size": 1536,
        "num_hidden_layers": 6,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "vocab_size": 4096,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
    },
    "bench-opt": {  # OPT layout (learned positions, LayerNorm, ReLU, biases); ~20 M parameters
        "model_type": "opt",
        "architectures": ["OPTForCausalLM"],
        "hidden_size": 512,
        "ffn_dim": 2048,
        "num_hidden_layers": 6,
        "num_attention_heads": 8,
        "vocab_size": 4096,
        "max_position_embeddings": 2048,
        "word_embed_proj_dim": 512,
        "do_layer_norm_before": True,
        "activation_function": "relu",
    },
}


def cache_dir() -> Path:
    """Where built bench checkpoints live (LAMINA_BENCH_CACHE, else ~/.cache/lamina-bench)."""
    root = os.environ.get("LAMINA_BENCH_CACHE") or Path.home() / ".cache" / "lamina-bench"
    return Path(root) / "models"


def local_model_config(name: str | Path) -> dict:
    """The config.json fields of a bench model or a checkpoint folder, checked to be a JSON object;
    UserInputError (one line, naming the file) when it cannot be read."""
    if str(name) in BENCH_MODELS:
        return dict(BENCH_MODELS[str(name)])
    path = Path(name) / "config.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserInputError(f"{path}: not a readable config.json ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: config.json must be a JSON object, got {type(data).__name__}")
    return data


def local_model_spec(name: str | Path):
    """The ModelSpec (catalog.models) of a bench model or checkpoint folder, from its checked config."""
    from lamina_bench.catalog.models import spec_from_hf_config

    return spec_from_hf_config(local_model_config(name), name=Path(name).name)


def resolve_local_model(name: str, where: str = "model") -> str:
    """A bench model name or an existing HF checkpoint folder whose config.json reads as a model;
    UserInputError otherwise."""
    if name in BENCH_MODELS:
        return name
    path = Path(name)
    if (path / "config.json").is_file():
        try:
            local_model_spec(path)
        except UserInputError as exc:
            raise UserInputError(f"{where}: {exc}") from None
        return str(path.resolve())
    raise UserInputError(
        f"{where}: unknown local model {name!r}; valid: {', '.join(BENCH_MODELS)} or a folder holding config.json"
    )


def checkpoint_path(name: str, seed: int = 0) -> Path:
    """The checkpoint folder of `name`, building it once (seeded random weights) if it is a bench model."""
    name = resolve_local_model(name)
    if name not in BENCH_MODELS:
        return Path(name)
    folder = cache_dir() / f"{name}-seed{seed}"
    if not (folder / "config.json").is_file():
        _build(name, folder, seed)
    return folder


def _build(name: str, folder: Path, seed: int) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(BENCH_MODELS[name])
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)  # config.json + model.safetensors
    (tmp / "lamina_bench.json").write_text(json.dumps({"bench_model": name, "seed": seed}))
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(folder)  # atomic: a crash never leaves a half-written checkpoint under the final name
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "config.json").is_file():  # fine only if another process finished the same build
            raise
