"""reference_impl.model against Hugging Face transformers on tiny random checkpoints (no downloads)."""

import json
import shutil

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from reference_impl.checkpoint import config_from_hf, hf_param_name, load_model
from reference_impl.errors import ConfigError
from reference_impl.model import Llama3RopeScaling, rope_inv_freq
from tests.reference_impl.tiny_models import (
    KINDS,
    build_tiny_hf_model,
    build_tiny_model,
    causal_attention,
    free_port,
    hf_logits,
    run_script,
    script_steps,
    tp_worker,
)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """kind -> (checkpoint folder, the HF model it was saved from)."""
    root = tmp_path_factory.mktemp("tiny")
    return {
        kind: (build_tiny_model(kind, root / kind, seed=1), build_tiny_hf_model(kind, seed=1))
        for kind in KINDS
    }


def close(actual, expected):
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ config
def test_config_from_hf_reads_llama31_gqa(ckpts):
    cfg = config_from_hf(json.loads((ckpts["llama31-gqa"][0] / "config.json").read_text()))
    assert (cfg.arch, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.num_layers) == ("llama", 4, 2, 16, 3)
    assert cfg.group_size == 2 and not cfg.tie_embeddings and not cfg.bias
    assert cfg.rope_scaling == Llama3RopeScaling(8.0, 1.0, 4.0, 64) and cfg.rope_theta == 10000.0


def test_config_from_hf_reads_pre_v5_rope_fields():
    # transformers < 5 and Meta's released config.json: rope_theta at top level, "rope_scaling" dict
    old = {
        "model_type": "llama",
        "vocab_size": 128256,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "max_position_embeddings": 131072,
    }
    cfg = config_from_hf(old)
    assert cfg.head_dim == 128 and cfg.rope_theta == 500000.0
    assert cfg.rope_scaling == Llama3RopeScaling(8.0, 1.0, 4.0, 8192)
    assert config_from_hf({**old, "rope_scaling": None}).rope_scaling is None


def test_opt_config(ckpts):
    cfg = config_from_hf(json.loads((ckpts["opt"][0] / "config.json").read_text()))
    assert (cfg.arch, cfg.intermediate_size, cfg.head_dim, cfg.norm_eps) == ("opt", 128, 16, 1e-5)
    assert cfg.tie_embeddings and cfg.bias and cfg.rope_scaling is None


def test_rope_llama3_scaling_hand_worked():
    # D=16, theta=1e4: inv_freq_j = 1e4^(-j/8), wavelength 2*pi/inv_freq. With original 64, factors 1/4:
    # j=0 (wavelength 6.28 < 16) kept; j=1 (19.9) blended: s = (64/19.87 - 1)/3 = 0.7404,
    # 0.31623 * ((1 - s)/8 + s) = 0.24439; j=2 (62.8 <= 64) blended to 0.013042; j>=3 divided by 8.
    got = rope_inv_freq(16, 10000.0, Llama3RopeScaling(8.0, 1.0, 4.0, 64))
    plain = rope_inv_freq(16, 10000.0, None)
    assert got[0] == pytest.approx(1.0)
    assert got[1].item() == pytest.approx(0.24439, rel=1e-4)
    assert got[2].item() == pytest.approx(0.013042, rel=1e-4)
    assert torch.allclose(got[3:], plain[3:] / 8)
    assert plain[1].item() == pytest.approx(10000 ** (-1 / 8), rel=1e-6)


def test_hf_param_names():
    assert hf_param_name("llama", "layers.3.attn.wq.weight") == "model.layers.3.self_attn.q_proj.weight"
    assert hf_param_name("llama", "norm.weight") == "model.norm.weight"
    assert hf_param_name("opt", "layers.0.mlp_norm.bias") == "model.decoder.layers.0.final_layer_norm.bias"
    assert hf_param_name("opt", "pos_embed") == "model.decoder.embed_positions.weight"


# -------------------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("kind", KINDS)
def test_prompt_logits_match_hf(ckpts, kind):
    path, hf = ckpts[kind]
    model = load_model(path)
    tokens = [1, 17, 200, 33, 4, 250, 9, 81, 123, 7, 64, 2]
    (logits,) = run_script(model, [{"s": tokens}])
    assert logits.shape == (12, 256) and logits.dtype == torch.float32
    close(logits, hf_logits(hf, tokens))
    assert logits.abs().max() > 1.0  # not a degenerate near-zero model


@pytest.mark.parametrize("kind", KINDS)
def test_batched_prefill_and_decode_match_hf(ckpts, kind):
    """Two sequences of different lengths prefilled in one varlen step, then 3 joint decode steps."""
    path, hf = ckpts[kind]
    steps = script_steps()
    logits = run_script(load_model(path), steps)
    history = {sid: [] for sid in steps[0]}
    for step, got in zip(steps, logits, strict=True):
        start = 0
        for sid, toks in step.items():
            history[sid] += toks
            close(got[start : start + len(toks)], hf_logits(hf, history[sid])[-len(toks) :])
            start += len(toks)


@pytest.mark.parametrize("kind", ["llama31-gqa", "opt"])
def test_arbitrary_positions_match_hf(ckpts, kind):
    path, hf = ckpts[kind]
    model = load_model(path)
    # uneven gaps: RoPE depends on position differences, so a uniform shift would change nothing for llama
    tokens, positions = [3, 99, 45, 12, 7], [40, 43, 47, 52, 58]

    class Fresh:  # attention over this chunk only, so HF's position_ids path is the exact reference
        def attend(self, q, k, v, layer):
            return causal_attention(q, k, v)

    with torch.no_grad():
        got = model.logits(model(torch.tensor(tokens), torch.tensor(positions), Fresh()))
    close(got, hf_logits(hf, tokens, positions))
    with torch.no_grad():  # and the positions really matter
        at_zero = model.logits(model(torch.tensor(tokens), torch.arange(5), Fresh()))
    assert (got - at_zero).abs().max() > 1e-2


def test_llama3_scaling_matters_in_the_hf_check(ckpts):
    """Dropping the llama3 frequency scaling breaks agreement with HF, so the match above tests it."""
    path, hf = ckpts["llama31-gqa"]
    model = load_model(path)
    model.inv_freq = rope_inv_freq(16, 10000.0, None)
    tokens = list(range(1, 60, 3))
    (logits,) = run_script(model, [{"s": tokens}])
    assert (logits - hf_logits(hf, tokens)).abs().max() > 1e-3


def test_sharded_checkpoint_loads_the_same(ckpts, tmp_path):
    sharded = build_tiny_model("llama31-gqa", tmp_path / "sharded", seed=1, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    one, many = load_model(ckpts["llama31-gqa"][0]), load_model(sharded)
    for (name, a), (_, b) in zip(one.named_parameters(), many.named_parameters(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_load(ckpts, dtype):
    path, _ = ckpts["llama31-gqa"]
    model = load_model(path, dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {dtype}
    assert model.inv_freq.dtype == torch.float32  # RoPE angles stay fp32
    (ref,) = run_script(load_model(path), [{"s": [1, 2, 3, 4, 5, 6]}])
    (got,) = run_script(model, [{"s": [1, 2, 3, 4, 5, 6]}])
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    # bf16 keeps 8 mantissa bits (rel. 2^-8 = 0.4 % per rounding); 3 layers stay within ~5 % of the range
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()


def test_tied_embeddings_share_storage(ckpts):
    model = load_model(ckpts["opt"][0])
    assert model.lm_head is model.embed
    assert "lm_head" not in dict(model.named_parameters())


# ------------------------------------------------------------------------------------ bad inputs
def _copy(ckpts, tmp_path, kind="llama2-mha"):
    dst = tmp_path / "ckpt"
    shutil.copytree(ckpts[kind][0], dst)
    return dst


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def _edit_tensors(path, edit):
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors")
    return path


BAD = {
    "missing folder": (lambda p: p / "nope", "does not exist"),
    "no config": (lambda p: (p / "config.json").unlink() or p, "no config.json"),
    "bad json": (lambda p: (p / "config.json").write_text("{oops") and p, "not valid JSON"),
    "unsupported arch": (lambda p: _edit_config(p, model_type="mistral"), "unsupported model_type 'mistral'"),
    "unsupported rope": (
        lambda p: _edit_config(p, rope_parameters={"rope_type": "yarn", "factor": 4.0}),
        "unsupported rope_type 'yarn'",
    ),
    "no safetensors": (lambda p: (p / "model.safetensors").unlink() or p, "no model.safetensors"),
    "corrupt safetensors": (
        lambda p: (p / "model.safetensors").write_bytes(b"\x10\x00garbage") and p,
        "cannot read",
    ),
    "truncated safetensors": (
        lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:5000]) and p,
        "cannot read",
    ),
    "missing tensor": (
        lambda p: _edit_tensors(p, lambda t: t.pop("model.layers.1.mlp.up_proj.weight")),
        "no tensor 'model.layers.1.mlp.up_proj.weight'",
    ),
    "shape mismatch": (
        lambda p: _edit_config(p, intermediate_size=96),
        "has shape (128, 64), config implies (96, 64)",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_checkpoint_is_one_line_config_error(ckpts, tmp_path, case):
    breaker, message = BAD[case]
    path = breaker(_copy(ckpts, tmp_path))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        load_model(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["llama2-mha", "opt"])
@pytest.mark.parametrize(
    "changes, message",
    [
        ({"num_attention_heads": 0}, "'num_attention_heads' must be an integer >= 1, got 0"),
        ({"num_attention_heads": None}, "'num_attention_heads' must be an integer >= 1, got None"),
        ({"hidden_size": "64"}, "'hidden_size' must be an integer >= 1, got '64'"),
        ({"num_hidden_layers": 2.5}, "'num_hidden_layers' must be an integer >= 1, got 2.5"),
        ({"vocab_size": True}, "'vocab_size' must be an integer >= 1, got True"),
    ],
)
def test_bad_config_fields_are_one_line_config_errors(ckpts, kind, changes, message):
    cfg = {**json.loads((ckpts[kind][0] / "config.json").read_text()), **changes}
    with pytest.raises(ConfigError, match=message) as err:
        config_from_hf(cfg)
    assert "\n" not in str(err.value)


def test_bad_llama_only_fields_are_config_errors(ckpts):
    base = json.loads((ckpts["llama2-mha"][0] / "config.json").read_text())
    with pytest.raises(ConfigError, match="'rms_norm_eps' must be a number > 0, got '1e-6'"):
        config_from_hf({**base, "rms_norm_eps": "1e-6"})
    with pytest.raises(ConfigError, match="'num_key_value_heads' must be an integer >= 1, got 0"):
        config_from_hf({**base, "num_key_value_heads": 0})
    assert config_from_hf({**base, "num_key_value_heads": None}).num_kv_heads == base["num_attention_heads"]


def test_opt_with_projections_rejected(ckpts, tmp_path):
    path = _edit_config(_copy(ckpts, tmp_path, "opt"), word_embed_proj_dim=32)
    with pytest.raises(ConfigError, match="word_embed_proj_dim 32 != hidden_size 64"):
        load_model(path)


def test_heads_not_divisible_by_tp_rejected(ckpts):
    with pytest.raises(ConfigError, match="num_kv_heads=2 is not divisible by tp_size=4"):
        load_model(ckpts["llama31-gqa"][0], tp_rank=0, tp_size=4)


# ------------------------------------------------------------------------------ tensor parallel
def test_tp2_over_gloo_equals_tp1(ckpts, tmp_path):
    kinds = ["llama31-gqa", "opt"]
    paths = [str(ckpts[k][0]) for k in kinds]
    mp.spawn(tp_worker, args=(2, free_port(), paths, str(tmp_path)), nprocs=2, join=True)
    for i, kind in enumerate(kinds):
        expected = run_script(load_model(paths[i]), script_steps())
        ranks = [torch.load(tmp_path / f"{i}_{r}.pt") for r in range(2)]
        # each rank holds half the query heads: wq (Hq/2 * D, d), wo (d, Hq/2 * D)
        assert ranks[0]["shapes"] == ((2 * 16, 64), (64, 2 * 16)), kind
        for rank in ranks:
            for got, ref in zip(rank["logits"], expected, strict=True):
                close(got, ref)  # not bit-equal: the all-reduce sums partial products in another order
            # the converter splits a TP model too, and its slices reproduce the TP forward exactly
            for got, ref in zip(rank["split_logits"], rank["logits"], strict=True):
                assert torch.equal(got, ref)
        # per rank, q/k/v/attention output carry half the heads: 4 tokens * fp16 * (64 + 2*k_width + 64) / 2
        kv_width = 32 if kind == "llama31-gqa" else 64
        live = [64 + 16 + 16] * 2 + [64] if kind == "llama31-gqa" else [64, 64]  # residual (+ RoPE cos, sin)
        assert ranks[0]["cut_bytes"] == [4 * 2 * (w + (128 + 2 * kv_width) // 2) for w in live]
