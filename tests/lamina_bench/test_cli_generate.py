"""`lamina-bench generate` against transformers' greedy generate on tiny random checkpoints."""

import json
import subprocess
import sys

import pytest
import torch

from lamina_bench.cli import main
from tests.reference_impl.tiny_models import build_tiny_hf_model

NEW_TOKENS = 32
PROMPT_LENS = (1, 5, 9, 17, 30, 41, 12)  # 7 prompts of different lengths
ARRIVALS = (0, 0, 2, 3, 3, 10, 25)  # engine iterations: later requests join while others decode


@pytest.fixture(scope="module", params=["llama2-mha", "llama31-gqa", "opt"])
def checkpoint(request, tmp_path_factory):
    """(folder, expected outputs): the HF model saved with save_pretrained, and its greedy tokens."""
    kind = request.param
    folder = tmp_path_factory.mktemp(kind)
    hf = build_tiny_hf_model(kind, seed=3)
    hf.save_pretrained(folder)
    gen = torch.Generator().manual_seed(11)
    prompts = [torch.randint(3, hf.config.vocab_size, (n,), generator=gen).tolist() for n in PROMPT_LENS]
    expected = []
    with torch.no_grad():
        for ids in prompts:
            out = hf.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,  # never stop at eos: compare all 32 tokens
                do_sample=False,
                pad_token_id=0,
            )
            expected.append(out[0, len(ids) :].tolist())
    return folder, prompts, expected


@pytest.fixture(scope="module")
def gqa_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gqa")
    build_tiny_hf_model("llama31-gqa", seed=4).save_pretrained(folder)
    return folder


PROMPTS = [[5, 9, 200], [7] * 20, [1, 2, 3, 4, 5, 6, 7]]


def _prompt_file(tmp_path, prompts, arrivals=None):
    path = tmp_path / "prompts.jsonl"
    lines = []
    for i, ids in enumerate(prompts):
        obj = {"prompt_ids": ids, "max_new_tokens": NEW_TOKENS}
        if arrivals:
            obj["arrival_step"] = arrivals[i]
        lines.append(json.dumps(obj))
    path.write_text("\n".join(lines) + "\n")
    return path


def _generate(capsys, *args):
    assert main(["generate", "--json", "--ignore-eos", *map(str, args)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    outputs, summary = lines[:-1], lines[-1]["summary"]
    return [o["output_ids"] for o in outputs], [o["prompt_ids"] for o in outputs], summary


def test_generate_matches_transformers_with_continuous_batching(checkpoint, tmp_path, capsys):
    folder, prompts, expected = checkpoint
    prompt_file = _prompt_file(tmp_path, prompts, ARRIVALS)
    # 5 blocks of 16 tokens hold at most two requests (prompt + 32 new <= 73 tokens = 5 blocks each)
    outputs, echoed, summary = _generate(
        capsys, "--model-dir", folder, "--prompts", prompt_file, "--block-size", 16, "--num-blocks", 10
    )
    assert echoed == prompts  # input order
    assert outputs == expected
    assert summary["max_waiting"] >= 1  # some requests had to wait for KV blocks
    assert summary["source"] == "measured" and summary["generated_tokens"] == len(prompts) * NEW_TOKENS


def test_tensor_parallel_two_processes_equals_one(checkpoint, tmp_path, capsys):
    folder, prompts, expected = checkpoint
    prompt_file = _prompt_file(tmp_path, prompts[:4])
    outputs, _, _ = _generate(
        capsys, "--model-dir", folder, "--prompts", prompt_file, "--tp", 2, "--num-blocks", 12
    )
    assert outputs == expected[:4]


def test_temperature_sampling_is_reproducible(gqa_folder, tmp_path, capsys):
    prompt_file = _prompt_file(tmp_path, PROMPTS)
    args = ("--model-dir", gqa_folder, "--prompts", prompt_file, "--temperature", 0.8, "--seed", 5)
    first, _, _ = _generate(capsys, *args)
    second, _, _ = _generate(capsys, *args)
    assert first == second and all(len(o) == NEW_TOKENS for o in first)


def _error(capsys, *args) -> str:
    assert main(["generate", *map(str, args)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("lamina-bench: error:")
    return err


def test_bad_inputs_give_one_line_and_exit_2(gqa_folder, tmp_path, capsys):
    folder = gqa_folder
    good = _prompt_file(tmp_path, PROMPTS[:1])
    assert "does not exist" in _error(capsys, "--model-dir", tmp_path / "nope", "--prompts", good)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert "holds no prompts" in _error(capsys, "--model-dir", folder, "--prompts", empty)
    too_long = tmp_path / "long.jsonl"
    too_long.write_text(json.dumps({"prompt_ids": [5] * 250, "max_new_tokens": 32}) + "\n")
    assert "exceeds the model's maximum of 256" in _error(
        capsys, "--model-dir", folder, "--prompts", too_long
    )
    malformed = tmp_path / "bad.jsonl"
    malformed.write_text('{"prompt": [1, 2]}\n')
    assert "bad.jsonl:1" in _error(capsys, "--model-dir", folder, "--prompts", malformed)
    assert "unknown dtype" in _error(capsys, "--model-dir", folder, "--prompts", good, "--dtype", "fp64")


def test_unsupported_and_corrupt_checkpoints(tmp_path, capsys):
    prompt_file = _prompt_file(tmp_path, [[1, 2, 3]])
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 64}))
    assert "gpt2" in _error(capsys, "--model-dir", gpt2, "--prompts", prompt_file)
    corrupt = tmp_path / "corrupt"
    build_tiny_hf_model("llama2-mha").save_pretrained(corrupt)
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    capsys.readouterr()  # drop save_pretrained's progress output
    assert "model.safetensors" in _error(capsys, "--model-dir", corrupt, "--prompts", prompt_file)


def test_console_script_exit_code(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lamina_bench.cli",
            "generate",
            "--model-dir",
            str(tmp_path),
            "--prompts",
            "x.jsonl",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1


def test_prompt_file_that_is_not_text_and_tp_the_model_cannot_split(
    gqa_folder, tmp_path, capsys, monkeypatch
):
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00\x96" * 50)
    err = _error(capsys, "--model-dir", gqa_folder, "--prompts", binary)
    assert f"prompt file {binary} is not UTF-8 text (JSONL expected)" in err

    import reference_impl.homogeneous as homogeneous

    def spawned(*args):
        raise AssertionError("tensor-parallel processes were started before the model was checked")

    monkeypatch.setattr(homogeneous, "_spawn_tp", spawned)
    good = _prompt_file(tmp_path, PROMPTS[:1])  # 4 heads, 2 KV heads: --tp 8 cannot split them
    assert "is not divisible by tp_size=8" in _error(
        capsys, "--model-dir", gqa_folder, "--prompts", good, "--tp", "8"
    )
