"""Model catalog: hand-worked sizes, and parameter counts checked against Hugging Face on the meta device."""

import pytest

from lamina_bench.catalog.models import (
    DTYPE_BYTES,
    ModelSpec,
    attention_flops_per_token,
    dense_flops_per_token,
    dtype_bytes,
    get_model,
    hf_config,
    kv_bytes_per_token,
    list_models,
    net_bytes_per_token_per_layer,
    param_count,
    weight_bytes,
)
from lamina_bench.errors import UserInputError

REQUIRED = [
    "llama-33b",
    "llama-65b",
    "llama2-7b",
    "llama2-13b",
    "llama2-70b",
    "llama3-8b",
    "llama3-70b",
    "llama3.1-405b",
    "opt-13b",
    "opt-30b",
    "opt-66b",
    "qwen2.5-72b",
]


def test_catalog_has_required_models_with_sources():
    names = [spec.name for spec in list_models()]
    assert set(REQUIRED) <= set(names)
    assert len(names) == len(set(names))
    for spec in list_models():
        assert spec.name == spec.name.lower()
        assert "config.json" in spec.source


def test_published_configs():
    m = get_model("llama-33b")
    assert (m.hidden_size, m.num_layers, m.num_heads, m.intermediate_size, m.vocab_size) == (
        6656, 60, 52, 17920, 32000,
    )  # fmt: skip
    m = get_model("llama-65b")
    assert (m.hidden_size, m.num_layers, m.num_heads, m.intermediate_size) == (8192, 80, 64, 22016)
    m = get_model("llama3-70b")
    assert (m.hidden_size, m.num_layers, m.num_heads, m.num_kv_heads, m.intermediate_size, m.vocab_size) == (
        8192, 80, 64, 8, 28672, 128256,
    )  # fmt: skip
    assert m.group_size == 8 and m.head_dim == 128
    m = get_model("qwen2.5-72b")
    assert (m.hidden_size, m.num_layers, m.num_heads, m.num_kv_heads, m.intermediate_size, m.vocab_size) == (
        8192, 80, 64, 8, 29568, 152064,
    )  # fmt: skip
    assert m.qkv_bias and not m.tie_embeddings
    m = get_model("opt-66b")
    assert m.intermediate_size == 4 * m.hidden_size == 4 * 9216 and m.mlp == "relu" and m.tie_embeddings


def test_lookup_is_case_insensitive_and_errors_name_choices():
    assert get_model("LLaMA3-70B") is get_model("llama3-70b")
    with pytest.raises(UserInputError, match=r"unknown model 'llama-7x'; valid: .*llama-33b"):
        get_model("llama-7x")


def test_hand_worked_llama3_70b_network_and_kv():
    m = get_model("llama3-70b")
    # 2 * L * n_kv * head_dim * e = 2 * 80 * 8 * 128 * 2
    assert kv_bytes_per_token(m) == 327_680
    # (2 + 2/G) * e * d = (2 + 2/8) * 2 * 8192
    assert net_bytes_per_token_per_layer(m) == 36_864
    assert net_bytes_per_token_per_layer(m, "fp8") == 18_432
    assert kv_bytes_per_token(m, "fp32") == 655_360


def test_hand_worked_mha_models():
    # LLaMA-33B: 2 * 60 * 6656 * 2; G = 1 so the network moves 4 * e * d
    m = get_model("llama-33b")
    assert kv_bytes_per_token(m) == 1_597_440
    assert net_bytes_per_token_per_layer(m) == 4 * 2 * 6656
    assert kv_bytes_per_token(get_model("llama-65b")) == 2_621_440


def test_param_counts_by_hand():
    assert param_count(get_model("llama2-7b")) == 6_738_415_616
    assert param_count(get_model("llama3-8b")) == 8_030_261_248
    # LLaMA-33B: embeddings + lm_head 2 * 32000 * 6656 = 425,984,000; per layer 4 * 6656^2 (attention)
    # + 3 * 6656 * 17920 (SwiGLU) + 2 * 6656 (norms) = 535,049,216; 60 layers; final norm 6656.
    assert param_count(get_model("llama-33b")) == 425_984_000 + 60 * 535_049_216 + 6656
    # OPT-13B: tied embeddings 50272 * 5120, positions 2050 * 5120, per layer 4 * (d^2 + d) attention
    # + (d*4d + 4d) + (4d*d + d) FFN + 4d LayerNorms, final LayerNorm 2d.
    d = 5120
    per_layer = 4 * (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d) + 4 * d
    assert param_count(get_model("opt-13b")) == 50272 * d + 2050 * d + 40 * per_layer + 2 * d
    assert weight_bytes(get_model("llama2-7b")) == 2 * 6_738_415_616
    assert weight_bytes(get_model("llama2-7b"), "fp8") == 6_738_415_616


def test_flops_by_hand():
    m = get_model("llama2-7b")
    # 2 * (32 * (4 * 4096^2 + 3 * 4096 * 11008) + 32000 * 4096)
    assert dense_flops_per_token(m) == 13_214_154_752
    # 4 * L * heads * head_dim * context = 4 * 80 * 64 * 128 * 1000
    assert attention_flops_per_token(get_model("llama3-70b"), 1000) == 2_621_440_000
    assert attention_flops_per_token(m, 0) == 0
    with pytest.raises(UserInputError, match="context_len"):
        attention_flops_per_token(m, -1)


def test_dtypes():
    assert DTYPE_BYTES == {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1}
    assert dtype_bytes("BF16") == 2
    with pytest.raises(UserInputError, match=r"unknown dtype 'int3'; valid: fp32, fp16, bf16, fp8"):
        kv_bytes_per_token(get_model("llama2-7b"), "int3")


def test_spec_validation():
    good = dict(
        name="tiny",
        family="llama",
        num_layers=2,
        hidden_size=64,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        intermediate_size=128,
        vocab_size=100,
        max_position=64,
        mlp="swiglu",
        tie_embeddings=False,
        qkv_bias=False,
        source="test",
    )
    assert ModelSpec(**good).group_size == 2
    for change, message in [
        ({"num_kv_heads": 3}, "not a multiple"),
        ({"family": "gpt"}, "family 'gpt'; valid: llama, opt, qwen2"),
        ({"mlp": "gelu"}, "mlp"),
        ({"num_layers": 0}, "num_layers must be a positive int"),
        ({"name": "Tiny"}, "lower-case"),
    ]:
        with pytest.raises(UserInputError, match=message):
            ModelSpec(**(good | change))


def _hf_meta_model(spec):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.AutoConfig.for_model(**hf_config(spec))
    with torch.device("meta"):  # shapes only, no memory
        return transformers.AutoModelForCausalLM.from_config(config)


def test_param_count_and_dense_flops_match_huggingface_for_every_model():
    torch = pytest.importorskip("torch")
    for spec in [s for s in list_models() if s.moe is None]:  # MoE models: test_moe_catalog.py
        model = _hf_meta_model(spec)
        assert param_count(spec) == sum(p.numel() for p in model.parameters()), spec.name
        # Every nn.Linear weight (lm_head included, even when tied) is one multiply-add per token.
        linear = sum(mod.weight.numel() for mod in model.modules() if isinstance(mod, torch.nn.Linear))
        assert dense_flops_per_token(spec) == 2 * linear, spec.name
        attn = (
            model.model.layers[0].self_attn
            if spec.family != "opt"
            else model.model.decoder.layers[0].self_attn
        )
        k_proj_out = attn.k_proj.weight.shape[0]
        assert kv_bytes_per_token(spec) == 2 * spec.num_layers * k_proj_out * 2, spec.name
