"""Prompt files, eos ids, the options both systems share and the `generate` command line (no model runs)."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch

from reference_impl.config import GenerateConfig, check_common_options
from reference_impl.errors import ConfigError
from reference_impl.lamina import LaminaConfig
from reference_impl.lamina.__main__ import build_parser as lamina_parser
from reference_impl.options import add_generate_arguments, config_from_args, defaults
from reference_impl.prompts import read_prompts, stop_token_ids


def _prompts(tmp_path, *lines: str):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_prompt_file_is_read_in_order(tmp_path):
    path = _prompts(
        tmp_path,
        '{"prompt_ids": [1, 2], "max_new_tokens": 3}',
        "",
        '{"prompt_ids": [0], "max_new_tokens": 1, "arrival_step": 2}',
    )
    reqs = read_prompts(path)
    assert [(r.request_id, r.prompt_ids, r.max_new_tokens, r.arrival_step) for r in reqs] == [
        (0, (1, 2), 3, 0),
        (1, (0,), 1, 2),
    ]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt_ids": [1, 2], "max_new_tokens": 3.7}', "max_new_tokens must be an integer, got 3.7"),
        ('{"prompt_ids": [1, 2], "max_new_tokens": 4.0}', "max_new_tokens must be an integer, got 4.0"),
        ('{"prompt_ids": [1, 2], "max_new_tokens": true}', "max_new_tokens must be an integer, got True"),
        ('{"prompt_ids": [1, 2], "max_new_tokens": "5"}', "max_new_tokens must be an integer, got '5'"),
        ('{"prompt_ids": [1], "max_new_tokens": 2, "arrival_step": 1.5}', "arrival_step must be an integer"),
        ('{"prompt_ids": [1, true], "max_new_tokens": 3}', "prompt_ids must be a list of non-negative"),
        ('{"prompt_ids": [1, 2.0], "max_new_tokens": 3}', "prompt_ids must be a list of non-negative"),
        ('{"prompt_ids": [1, -2], "max_new_tokens": 3}', "prompt_ids must be a list of non-negative"),
        ('{"prompt_ids": [1, 2]}', "max_new_tokens"),
        ("[1, 2]", "expected"),
        ('{"prompt_ids": [1], "max_new_tokens": 0}', "max_new_tokens must be >= 1"),
    ],
)
def test_bad_prompt_lines_are_one_line_config_errors(tmp_path, line, message):
    path = _prompts(tmp_path, '{"prompt_ids": [1], "max_new_tokens": 1}', line)
    with pytest.raises(ConfigError, match=message) as err:
        read_prompts(path)
    assert str(err.value).startswith(f"{path}:2: ") and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "generation_config, expected",
    [
        ({"eos_token_id": 2}, (2,)),
        ({"eos_token_id": [2, 7]}, (2, 7)),
        ({"bos_token_id": 1}, (9,)),  # no eos here: config.json's
    ],
)
def test_stop_token_ids_prefer_generation_config(tmp_path, generation_config, expected):
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 9}))
    (tmp_path / "generation_config.json").write_text(json.dumps(generation_config))
    assert stop_token_ids(tmp_path) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("{oops", "not valid JSON"),
        ("[2]", "expected a JSON object"),
        ('{"eos_token_id": "2"}', "eos_token_id must be a non-negative integer or a list of them, got '2'"),
        ('{"eos_token_id": [2, 1.5]}', r"got \[2, 1.5\]"),
    ],
)
def test_invalid_generation_config_is_a_config_error(tmp_path, text, message):
    (tmp_path / "generation_config.json").write_text(text)
    with pytest.raises(ConfigError, match=message):
        stop_token_ids(tmp_path)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"dtype": "fp8"}, "unknown dtype 'fp8'"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
        ({"block_size": 12}, "power of two"),
        ({"num_blocks": 0}, "--num-blocks must be >= 1"),
        ({"attention_backend": "flash"}, "unknown attention backend 'flash'; valid: auto, torch, triton"),
        ({"attention_backend": "triton", "block_size": 8}, "needs --block-size in 16..256, got 8"),
        ({"attention_backend": "triton", "block_size": 512}, "needs --block-size in 16..256, got 512"),
    ],
)
def test_common_options_are_checked_in_one_place(options, message):
    args = {
        "device": "cpu",
        "dtype": "fp32",
        "block_size": 16,
        "num_blocks": None,
        "attention_backend": "auto",
    }
    with pytest.raises(ConfigError, match=message):
        check_common_options(**{**args, **options})
    with pytest.raises(ConfigError, match=message):
        GenerateConfig(model_dir="unused", **options)


def test_small_blocks_are_fine_with_the_torch_backend():
    GenerateConfig(model_dir="unused", block_size=8)  # auto resolves to torch on CPU
    GenerateConfig(model_dir="unused", block_size=8, attention_backend="torch")


def test_auto_backend_on_cuda_rejects_blocks_triton_cannot_take(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr("reference_impl.attention.dispatch.triton_available", lambda: True)
    with pytest.raises(ConfigError, match="triton attention backend needs --block-size in 16..256, got 8"):
        GenerateConfig(model_dir="unused", device="cuda", block_size=8)
    GenerateConfig(model_dir="unused", device="cuda", block_size=8, attention_backend="torch")
    with pytest.raises(ConfigError, match="--tp 2 needs 2 GPUs, torch sees 1"):
        GenerateConfig(model_dir="unused", device="cuda", tp=2)


# ---- the generate command line ---------------------------------------------------------------------


def test_both_configs_share_the_engine_defaults():
    homogeneous, lamina = defaults(GenerateConfig), defaults(LaminaConfig)
    shared = homogeneous.keys() & lamina.keys()
    assert {"device", "dtype", "block_size", "num_blocks", "temperature", "attention_backend"} <= shared
    assert {k: homogeneous[k] for k in shared} == {k: lamina[k] for k in shared}


def _parse(systems, argv):
    parser = argparse.ArgumentParser()
    add_generate_arguments(parser, systems)
    return parser.parse_args(["--model-dir", "m", "--prompts", "p.jsonl", *argv])


@pytest.mark.parametrize("systems", [("homogeneous", "lamina"), ("homogeneous",), ("lamina",)])
def test_parsed_defaults_are_the_config_defaults(systems):
    args = _parse(systems, [])
    for cls in (GenerateConfig, LaminaConfig):
        if cls is GenerateConfig and "homogeneous" not in systems:
            continue
        assert config_from_args(cls, args) == cls(model_dir="m")


def test_parsed_options_reach_the_configs():
    args = _parse(("homogeneous", "lamina"), ["--tp", "2", "--attention-workers", "3", "--block-size", "32"])
    assert dataclasses.astuple(config_from_args(GenerateConfig, args))[:3] == ("m", "homogeneous", 2)
    lamina = config_from_args(LaminaConfig, args)
    assert (lamina.attention_workers, lamina.block_size, lamina.launcher) == (3, 32, "processes")


def test_lamina_command_line_has_no_homogeneous_options():
    parser = lamina_parser()
    assert parser.parse_args(["--model-dir", "m", "--prompts", "p", "--attention-split"]).attention_split
    with pytest.raises(SystemExit):
        parser.parse_args(["--model-dir", "m", "--prompts", "p", "--tp", "2"])
