"""`lamina-bench generate --system afd`: attention and expert workers as supervised processes over gloo.

Through the CLI code path: transformers' greedy tokens on tiny random Mixtral (2 attention + 2 expert
workers, ping-pong), Qwen3-MoE and DeepSeek-V3 (slow); the measured combine bytes per token per MoE layer
equal the catalog's AFD figure; bad input is one line and exit 2; a killed expert worker is one line and
exit 1 within 30 s with no process left. (Every layout through the threads launcher:
tests/reference_impl/test_afd.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from lamina_bench.catalog.models import spec_from_hf_config
from lamina_bench.catalog.moe import afd_bytes_per_token_per_layer
from lamina_bench.cli import main
from reference_impl.faults import FAULT_ENV
from tests.reference_impl.test_faults import MARK_ENV, REPO, _assert_nothing_left
from tests.reference_impl.tiny_models import MLA_KIND, build_tiny_hf_model, build_tiny_model

NEW_TOKENS = 8
PROMPT_LENS = (1, 5, 17, 9)
ARRIVALS = (0, 0, 2, 3)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """kind -> (folder, prompts, transformers' greedy tokens), built when first asked for."""
    cache = {}

    def get(kind):
        if kind not in cache:
            folder = tmp_path_factory.mktemp(kind)
            hf = build_tiny_hf_model(kind, seed=3)
            hf.save_pretrained(folder)
            hf.generation_config.eos_token_id = None  # --ignore-eos keeps eos tokens; so must transformers
            gen = torch.Generator().manual_seed(11)
            prompts = [
                torch.randint(3, hf.config.vocab_size, (n,), generator=gen).tolist() for n in PROMPT_LENS
            ]
            expected = []
            with torch.no_grad():
                for ids in prompts:
                    out = hf.generate(
                        torch.tensor([ids]),
                        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                        max_new_tokens=NEW_TOKENS,
                        do_sample=False,
                        pad_token_id=0,
                    )
                    expected.append(out[0, len(ids) :].tolist())
            cache[kind] = (folder, prompts, expected)
        return cache[kind]

    return get


def _prompt_file(tmp_path, prompts, arrivals=ARRIVALS):
    path = tmp_path / "prompts.jsonl"
    lines = [
        json.dumps({"prompt_ids": ids, "max_new_tokens": NEW_TOKENS, "arrival_step": a})
        for ids, a in zip(prompts, arrivals, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


LAYOUTS = [
    pytest.param("mixtral", 2, 2, 2, id="mixtral-A2-E2-pingpong"),
    pytest.param("qwen3-moe", 1, 4, 1, marks=pytest.mark.slow, id="qwen3-moe-A1-E4"),
    pytest.param(MLA_KIND, 2, 8, 2, marks=pytest.mark.slow, id="deepseek-v3-A2-E8-pingpong"),
]


@pytest.mark.parametrize("kind, attention, experts, micro", LAYOUTS)
def test_afd_processes_match_transformers(checkpoints, kind, attention, experts, micro, tmp_path, capsys):
    folder, prompts, expected = checkpoints(kind)
    args = ["--model-dir", folder, "--prompts", _prompt_file(tmp_path, prompts), "--system", "afd"]
    args += ["--attention-workers", attention, "--expert-workers", experts, "--pipeline-batches", micro]
    assert main(["generate", "--json", "--ignore-eos", *map(str, args)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [o["output_ids"] for o in lines[:-1]] == expected
    summary = lines[-1]["summary"]
    assert (summary["system"], summary["expert_workers"], summary["header_bytes_per_message"]) == (
        "afd",
        experts,
        480,
    )
    # the catalog's AFD figure, k d e each way: combine always, dispatch when every expert has its own worker
    spec = spec_from_hf_config(json.loads((folder / "config.json").read_text()))
    dispatch, combine = afd_bytes_per_token_per_layer(spec, "fp32")
    assert summary["combine_bytes_per_token_per_moe_layer"] == combine
    assert 0 < summary["dispatch_bytes_per_token_per_moe_layer"] <= dispatch
    assert summary["combine_bytes_per_token"] == combine * summary["moe_layers"]
    assert summary["traffic"]["dispatch"]["header_bytes"] == 480 * summary["traffic"]["dispatch"]["messages"]


def _error(capsys, *args) -> str:
    assert main(["generate", *map(str, args)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("lamina-bench: error:")
    return err


@pytest.mark.parametrize(
    "options, message",
    [
        (("--expert-workers", 5), "--expert-workers 5 exceeds the 4 routed experts of"),
        (("--expert-workers", 0), "--expert-workers must be an integer >= 1, got 0"),
        (("--expert-workers", -1), "--expert-workers must be an integer >= 1, got -1"),
        (("--attention-workers", 0), "--attention-workers must be an integer >= 1, got 0"),
        (
            ("--pipeline-batches", 3),
            "--pipeline-batches 3 is not an AFD mode; valid: 1 (none), 2 (ping-pong)",
        ),
    ],
)
def test_bad_afd_options_are_one_line_and_exit_2(tmp_path, capsys, options, message):
    folder = build_tiny_model("mixtral", tmp_path / "mixtral")
    prompts = _prompt_file(tmp_path, [[1, 2, 3]], [0])
    capsys.readouterr()  # drop save_pretrained's progress output
    err = _error(capsys, "--model-dir", folder, "--prompts", prompts, "--system", "afd", *options)
    assert message in err


def test_afd_on_a_dense_model_is_one_line_and_exit_2(tmp_path, capsys):
    folder = build_tiny_model("llama31-gqa", tmp_path / "llama")
    prompts = _prompt_file(tmp_path, [[1, 2, 3]], [0])
    capsys.readouterr()  # drop save_pretrained's progress output
    err = _error(capsys, "--model-dir", folder, "--prompts", prompts, "--system", "afd")
    assert "--system afd needs a mixture-of-experts model (mixtral, qwen3_moe, deepseek_v3)" in err
    assert err.endswith("is a dense llama model")


def test_a_killed_expert_worker_is_one_line_and_exit_1_within_30_s(checkpoints, tmp_path, monkeypatch):
    """1 attention + 2 expert workers; expert worker 1 (rank 2, experts 2..3) is SIGKILLed at decode step 1.
    There is no recovery: its experts exist nowhere else."""
    folder, prompts, _ = checkpoints("mixtral")
    mark = os.urandom(8).hex()
    env = dict(os.environ, **{FAULT_ENV: "2:decode=1:KILL", MARK_ENV: mark})
    command = [sys.executable, "-m", "lamina_bench.cli", "generate", "--model-dir", str(folder), "--prompts"]
    command += [
        str(_prompt_file(tmp_path, prompts)),
        "--system",
        "afd",
        "--expert-workers",
        "2",
        "--ignore-eos",
    ]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert time.monotonic() - started < 30
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (
        "lamina-bench: error: rank 2 (expert worker 1, experts 2..3) was killed by SIGKILL during decode step 1; "
        "the group cannot go on without it\n"
    )
    _assert_nothing_left(mark)


@pytest.mark.slow
def test_a_hung_attention_worker_is_found_silent_and_the_run_ends(checkpoints, monkeypatch):
    """Attention worker 1 (rank 1) freezes (SIGSTOP) at decode step 1; heartbeat timeout 3 s."""
    from reference_impl.afd import AFDConfig, generate_afd
    from reference_impl.engine import Request
    from reference_impl.errors import WorkerFailure

    folder, prompts, _ = checkpoints("mixtral")
    mark = os.urandom(8).hex()
    monkeypatch.setenv(FAULT_ENV, "1:decode=1:STOP")
    monkeypatch.setenv(MARK_ENV, mark)
    requests = [Request(i, tuple(p), NEW_TOKENS) for i, p in enumerate(prompts)]
    cfg = AFDConfig(model_dir=str(folder), attention_workers=2, expert_workers=2, heartbeat_timeout_s=3.0)
    with pytest.raises(WorkerFailure) as err:
        generate_afd(cfg, requests)
    assert str(err.value) == (
        "rank 1 (attention worker 1) was silent for 3 s (no heartbeat, no CPU time: stopped or hung) and was "
        "killed during decode step 1; the group cannot go on without it"
    )
    assert err.value.failure.since_fault_s < 4.0
    _assert_nothing_left(mark)
