"""`lamina-bench generate --scheduler vllm`: preemptions under a small KV budget, the same tokens as
reserve-all and transformers, the counts in --json and the text line, and bad input as one line."""

import json

import pytest
import torch

from lamina_bench.cli import main
from tests.reference_impl.tiny_models import build_tiny_hf_model

NEW_TOKENS = 16
PROMPT_LENS = (6, 11, 3, 9, 5)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(folder, prompt file, transformers' greedy tokens) for a tiny random Llama-2 checkpoint."""
    folder = tmp_path_factory.mktemp("llama2")
    hf = build_tiny_hf_model("llama2-mha", seed=1)
    hf.save_pretrained(folder)
    hf.generation_config.eos_token_id = None  # all NEW_TOKENS greedy tokens, eos included (--ignore-eos)
    gen = torch.Generator().manual_seed(4)
    prompts = [torch.randint(3, hf.config.vocab_size, (n,), generator=gen).tolist() for n in PROMPT_LENS]
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
    prompt_file = folder / "prompts.jsonl"
    lines = [json.dumps({"prompt_ids": ids, "max_new_tokens": NEW_TOKENS}) for ids in prompts]
    prompt_file.write_text("\n".join(lines) + "\n")
    return folder, prompt_file, expected


def _generate_json(capsys, folder, prompt_file, *args):
    base = ["generate", "--json", "--ignore-eos", "--model-dir", folder, "--prompts", prompt_file]
    assert main([*map(str, base), *map(str, args)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return [o["output_ids"] for o in lines[:-1]], lines[-1]["summary"]


def test_vllm_scheduler_preempts_and_keeps_the_tokens(checkpoint, capsys):
    # 10 blocks of 4 tokens; the longest request needs 11 + 16 - 1 = 26 tokens (7 blocks) alone
    folder, prompt_file, expected = checkpoint
    small = ("--block-size", 4, "--num-blocks", 10)
    vllm, summary = _generate_json(capsys, folder, prompt_file, *small, "--scheduler", "vllm")
    reserve_all, summary_ra = _generate_json(capsys, folder, prompt_file, *small)
    assert vllm == reserve_all == expected
    assert summary["scheduler"] == "vllm" and summary["preemptions"] >= 2 and summary["recomputed_tokens"] > 0
    assert (summary_ra["scheduler"], summary_ra["preemptions"], summary_ra["recomputed_tokens"]) == (
        "reserve-all",
        0,
        0,
    )
    assert summary["generated_tokens"] == summary_ra["generated_tokens"] == NEW_TOKENS * len(PROMPT_LENS)


def test_text_output_names_the_scheduler_and_its_preemptions(checkpoint, capsys):
    folder, prompt_file, _ = checkpoint
    args = [
        "generate",
        "--ignore-eos",
        "--model-dir",
        folder,
        "--prompts",
        prompt_file,
        "--scheduler",
        "vllm",
    ]
    assert main([*map(str, args), "--max-num-seqs", "2"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert "scheduler vllm: 0 preemptions, 0 tokens recomputed" in last  # default cache: room for all


def _error(capsys, *args) -> str:
    assert main(["generate", *map(str, args)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("lamina-bench: error:")
    return err


@pytest.mark.parametrize(
    "options, message",
    [
        (("--scheduler", "vllm", "--block-size", 0), "--block-size must be a power of two, got 0"),
        (("--scheduler", "vllm", "--block-size", -4), "--block-size must be a power of two, got -4"),
        (
            ("--scheduler", "vllm", "--block-size", 4, "--num-blocks", 1),
            "request 0: its prompt of 6 tokens needs 2 KV blocks of 4 tokens but the whole cache has 1",
        ),
        (
            ("--scheduler", "vllm", "--block-size", 4, "--num-blocks", 2),
            "request 0 needs 22 KV tokens but the whole cache holds 8",  # the prompt fits, the output not
        ),
        (("--scheduler", "fcfs"), "unknown scheduler 'fcfs'; valid: reserve-all, vllm"),
        (("--max-num-seqs", 4), "--max-num-seqs apply to --scheduler vllm only"),
        (("--scheduler", "vllm", "--max-num-seqs", 0), "--max-num-seqs must be an integer >= 1, got 0"),
        (
            ("--scheduler", "vllm", "--max-num-seqs", 4, "--max-num-batched-tokens", 20),
            "request 0: prefills of up to 21 tokens (prompt + max_new_tokens - 1",
        ),
        (
            ("--system", "lamina", "--scheduler", "vllm", "--max-num-seqs", 8, "--max-num-batched-tokens", 4),
            r"--max-num-batched-tokens (4) must be >= --max-num-seqs (8)",
        ),
    ],
)
def test_bad_scheduler_input_is_one_line_and_exit_2(checkpoint, capsys, options, message):
    folder, prompt_file, _ = checkpoint
    assert message in _error(capsys, "--model-dir", folder, "--prompts", prompt_file, *options)
