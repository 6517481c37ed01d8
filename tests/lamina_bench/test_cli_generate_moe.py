"""`lamina-bench generate` on tiny random Mixtral, Qwen3-MoE and DeepSeek-V3 (latent attention) checkpoints
against transformers' greedy tokens: homogeneous (continuous batching, TP=2) and Lamina (attention on
attention workers, experts on the compute worker), through the CLI code path."""

import json

import pytest
import torch

from lamina_bench.cli import main
from tests.reference_impl.tiny_models import MLA_KIND, MOE_KINDS, build_tiny_hf_model

NEW_TOKENS = 16
PROMPT_LENS = (1, 5, 17, 30, 9)  # 5 prompts of different lengths
ARRIVALS = (0, 0, 2, 3, 8)  # engine iterations: later requests join while others decode


@pytest.fixture(scope="module", params=(*MOE_KINDS, MLA_KIND))
def checkpoint(request, tmp_path_factory):
    """(folder, prompts, transformers' greedy tokens): the HF model saved with save_pretrained (safetensors)."""
    kind = request.param
    folder = tmp_path_factory.mktemp(kind)
    hf = build_tiny_hf_model(kind, seed=3)
    hf.save_pretrained(folder)
    gen = torch.Generator().manual_seed(11)
    prompts = [torch.randint(3, hf.config.vocab_size, (n,), generator=gen).tolist() for n in PROMPT_LENS]
    # no eos: --ignore-eos keeps an eos token in the output, where min_new_tokens would mask it out
    hf.generation_config.eos_token_id = None
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
    return kind, folder, prompts, expected


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
    return [o["output_ids"] for o in lines[:-1]], lines[-1]["summary"]


def test_homogeneous_matches_transformers_with_continuous_batching(checkpoint, tmp_path, capsys):
    _, folder, prompts, expected = checkpoint
    prompt_file = _prompt_file(tmp_path, prompts, ARRIVALS)
    # 6 blocks of 16 tokens hold at most two requests at once (prompt + 16 new <= 46 tokens = 3 blocks each)
    outputs, summary = _generate(
        capsys, "--model-dir", folder, "--prompts", prompt_file, "--block-size", 16, "--num-blocks", 6
    )
    assert outputs == expected
    assert summary["max_waiting"] >= 1 and summary["generated_tokens"] == len(prompts) * NEW_TOKENS


# Qwen3-MoE's TP=2 logits: tests/reference_impl/test_moe.py
@pytest.mark.parametrize("checkpoint", ["mixtral", MLA_KIND], indirect=True)
def test_tensor_parallel_two_processes(checkpoint, tmp_path, capsys):
    kind, folder, prompts, expected = checkpoint
    args = ("--model-dir", folder, "--prompts", _prompt_file(tmp_path, prompts[:3]), "--tp", 2)
    if kind == MLA_KIND:  # one latent KV head: nothing to split
        assert "runs with tp_size 1 (one latent KV head), got 2" in _error(capsys, *args)
    else:
        outputs, _ = _generate(capsys, *args)
        assert outputs == expected[:3]


LAMINA = {  # processes over gloo: compute workers run the experts, attention workers the KV heads
    "mixtral": ("--compute-workers", 2, "--attention-workers", 2, "--pipeline-batches", 2),  # TP=2, ping-pong
    MLA_KIND: ("--compute-workers", 1, "--attention-workers", 1),  # the latent cache is one KV head
}  # (Qwen3-MoE through the converter: tests/reference_impl/test_moe.py)


@pytest.mark.slow  # Lamina over gloo processes; homogeneous and AFD parity run in make test
@pytest.mark.parametrize("checkpoint", list(LAMINA), indirect=True)
def test_lamina_matches_transformers(checkpoint, tmp_path, capsys):
    kind, folder, prompts, expected = checkpoint
    prompt_file = _prompt_file(tmp_path, prompts, ARRIVALS)
    outputs, summary = _generate(
        capsys, "--model-dir", folder, "--prompts", prompt_file, "--system", "lamina", *LAMINA[kind]
    )
    assert outputs == expected
    assert summary["generated_tokens"] == len(prompts) * NEW_TOKENS


def _error(capsys, *args) -> str:
    assert main(["generate", *map(str, args)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("lamina-bench: error:")
    return err


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"num_experts_per_tok": 9}, "top_k 9 exceeds the 4 experts"),
        ({"num_local_experts": "eight"}, "'num_local_experts' must be an integer >= 1"),
        ({"sliding_window": 128}, "sliding-window attention is not supported"),
    ],
)
def test_bad_moe_config_is_one_line_and_exit_2(tmp_path, capsys, changes, message):
    folder = tmp_path / "mixtral"
    build_tiny_hf_model("mixtral", seed=0).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | changes))
    capsys.readouterr()  # drop save_pretrained's progress output
    for system in ("homogeneous", "lamina"):
        prompt_file = _prompt_file(tmp_path, [[1, 2, 3]])
        assert message in _error(capsys, "--model-dir", folder, "--prompts", prompt_file, "--system", system)
