"""reference_impl.mla: DeepSeek-V3's latent attention in the absorbed form against transformers (which expands
the keys and values), what the paged cache holds, the converter's cut, and bad DeepSeek-V3 configs."""

import json

import pytest
import torch

from reference_impl.checkpoint import config_from_hf, hf_param_name, load_model
from reference_impl.converter import split_model
from reference_impl.errors import ConfigError
from reference_impl.homogeneous import HomogeneousExecutor
from reference_impl.mla import MLAConfig
from tests.reference_impl.tiny_models import (
    MLA_KIND,
    build_tiny_hf_model,
    hf_logits,
    run_script,
    script_steps,
    split_forward,
)

VARIANTS = {  # the tiny model (q LoRA, interleaved RoPE) and the two other layouts DeepSeek configs allow
    "tiny": {},
    "no-q-lora": {"q_lora_rank": None},
    "rotate-half-rope": {"rope_interleave": False},
}


def _save(tmp_path, changes: dict, seed: int = 1):
    """A tiny DeepSeek-V3 with `changes` to its config, saved with save_pretrained; (folder, HF model)."""
    from transformers import AutoModelForCausalLM

    base = build_tiny_hf_model(MLA_KIND, seed=seed)
    if changes:  # rebuild with the changed config, copying every tensor both have by name
        config = base.config.to_dict() | changes
        config = type(base.config)(**{k: v for k, v in config.items() if k != "model_type"})
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen) if "norm" in name
                        else 0.15 * torch.randn(p.shape, generator=gen))  # fmt: skip
        base = model
    folder = tmp_path / "ckpt"
    base.save_pretrained(folder)
    return folder, base


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny DeepSeek-V3 checkpoint folder."""
    return _save(tmp_path_factory.mktemp("deepseek"), {})[0]


def close(actual, expected):
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_batched_prefill_and_decode_match_hf(tmp_path, variant):
    folder, hf = _save(tmp_path, VARIANTS[variant])
    steps = script_steps()
    logits = run_script(load_model(folder), steps)
    history = {sid: [] for sid in steps[0]}
    for step, got in zip(steps, logits, strict=True):
        start = 0
        for sid, toks in step.items():
            history[sid] += toks
            close(got[start : start + len(toks)], hf_logits(hf, history[sid])[-len(toks) :])
            start += len(toks)
    assert logits[0].abs().max() > 1.0


def test_config_and_names(tiny):
    cfg = config_from_hf(json.loads((tiny / "config.json").read_text()))
    assert cfg.mla == MLAConfig(32, 16, 16, 8, 16, rope_interleave=True)
    # the cache sees one KV head of kv_lora_rank + qk_rope_head_dim = 24; RoPE rotates 8 features
    assert (cfg.num_kv_heads, cfg.head_dim, cfg.rope_dim, cfg.num_heads) == (1, 24, 8, 4)
    assert cfg.moe.dense_layers == (0,) and cfg.moe.num_shared_experts == 1 and cfg.moe.score_bias
    assert cfg.mla.softmax_scale == pytest.approx(24**-0.5)  # (nope 16 + rope 8)^-0.5
    assert hf_param_name("deepseek_v3", "layers.2.mlp.router.score_bias") == (
        "model.layers.2.mlp.gate.e_score_correction_bias"
    )
    assert hf_param_name("deepseek_v3", "layers.1.attn.kv_a.weight") == (
        "model.layers.1.self_attn.kv_a_proj_with_mqa.weight"
    )


def test_the_cache_holds_the_latent_and_rope_key_only(tiny):
    executor = HomogeneousExecutor(load_model(tiny), num_blocks=4, block_size=16)
    # per token per layer: k and v of one head of 16 + 8 = 24 features (the same vector twice), against
    # 4 heads x (16 + 8 + 16) = 160 for the expanded keys and values
    assert tuple(executor.cache.k.shape[-2:]) == (1, 24) and executor.cache.v.shape == executor.cache.k.shape


def test_converter_cuts_around_the_latent_attention(tiny):
    model = load_model(tiny)
    split = split_model(model)
    for a, b in zip(run_script(model, script_steps()), run_script(model, script_steps(), split_forward(split)),
                    strict=True):  # fmt: skip
        assert torch.equal(a, b)
    # per token at a cut: residual 64, RoPE cos and sin 8 each, query 4 x 24, key 24, value 24 (the same
    # latent), output 4 x 24; no weight-derived value crosses (kv_b is read on both sides)
    values = split.cut_values(1, torch.float32)[0]
    assert [(v.role, v.shape) for v in values] == [
        ("live", (1, 64)), ("live", (1, 8)), ("live", (1, 8)),
        ("q", (1, 4, 24)), ("k", (1, 1, 24)), ("v", (1, 1, 24)), ("attn_out", (1, 4, 24)),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"rope_parameters": {"rope_type": "yarn", "factor": 40.0, "rope_theta": 1e4}}, "rope_type 'yarn'"),
        ({"quantization_config": {"quant_method": "fp8"}}, "quantized checkpoints"),
        ({"scoring_func": "softmax"}, "scoring_func 'softmax' is not supported; supported: sigmoid"),
        ({"first_k_dense_replace": 4}, "'first_k_dense_replace' 4 exceeds num_hidden_layers 3"),
        ({"n_group": 3}, r"num_experts \(8\) divisible by n_group \(3\)"),
        ({"num_experts_per_tok": 5}, "cannot supply top_k 5 from 2 groups"),
        ({"qk_rope_head_dim": 7}, "qk_rope_head_dim must be even"),
        ({"rope_interleave": 1}, "'rope_interleave' must be true or false"),
        ({"n_shared_experts": -1}, "'n_shared_experts' must be an integer >= 0"),
    ],
)
def test_bad_deepseek_configs(tiny, changes, message):
    cfg = json.loads((tiny / "config.json").read_text())
    with pytest.raises(ConfigError, match=message):
        config_from_hf(cfg | changes)


def test_latent_attention_has_no_tensor_parallelism(tiny):
    with pytest.raises(ConfigError, match="runs with tp_size 1"):
        load_model(tiny, tp_rank=0, tp_size=2)
