"""MoE catalog: hand-worked sizes, published totals, HF parameter counts on the meta device, refusals."""

import dataclasses
import json

import pytest
import torch

from lamina_bench.catalog import moe
from lamina_bench.catalog.models import (
    ModelSpec,
    MoEModelSpec,
    dense_flops_per_token,
    derived_sizes,
    get_model,
    hf_config,
    kv_bytes_per_token,
    layer_matmul_params,
    list_models,
    net_bytes_per_token_per_layer,
    param_count,
    same_layer_shape,
    spec_from_hf_config,
    weight_bytes,
)
from lamina_bench.catalog.moe import MLASpec, MoESpec
from lamina_bench.cli import main
from lamina_bench.errors import UserInputError

MOE_NAMES = ("mixtral-8x7b", "mixtral-8x22b", "qwen3-30b-a3b", "qwen3-235b-a22b", "deepseek-v3")

TINY = dict(
    name="tiny-moe", family="mixtral", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16,
    intermediate_size=32, vocab_size=256, max_position=256, mlp="swiglu", tie_embeddings=False, qkv_bias=False,
    source="test",
)  # fmt: skip


def tiny(**moe_fields) -> MoEModelSpec:
    return MoEModelSpec(**TINY, moe=MoESpec(**({"num_experts": 4, "top_k": 2, "expert_intermediate_size": 32}
                                               | moe_fields)))  # fmt: skip


def test_tiny_mixtral_sizes_by_hand():
    s = tiny()
    # attention 64*64 (q) + 2*64*32 (k, v) + 64*64 (o) = 12,288; expert 3*64*32 = 6,144; router 4*64 = 256;
    # 2 norms 128 -> layer 12,288 + 4*6,144 + 256 + 128 = 37,248; x2 + embed/lm_head 2*256*64 + final norm 64
    assert moe.attention_params(s) == 12_288 and moe.expert_params(s) == 6_144
    assert param_count(s) == moe.total_params(s) == 2 * 37_248 + 32_768 + 64 == 107_328
    assert moe.active_params(s) == 107_328 - 2 * 2 * 6_144 == 82_752  # 2 layers skip 2 of 4 experts
    assert weight_bytes(s, "bf16") == 2 * 107_328
    assert moe.expert_bytes(s, "fp16") == 12_288 and moe.routed_expert_bytes(s, "fp32") == 2 * 4 * 6_144 * 4
    assert kv_bytes_per_token(s) == 2 * 2 * 2 * 16 * 2 == 256  # attention is unchanged by the experts
    assert moe.afd_bytes_per_token_per_layer(s, "bf16") == (2 * 64 * 2, 256)
    # one shared expert, the first layer dense (intermediate 32): 1 MoE layer of 4 + 1 experts and a router
    s = tiny(num_shared_experts=1, dense_layers=(0,))
    assert moe.moe_layers(s) == 1
    assert moe.total_params(s) == 2 * (12_288 + 128) + 3 * 64 * 32 + (256 + 5 * 6_144) + 32_768 + 64
    assert moe.active_params(s) == moe.total_params(s) - 2 * 6_144


def test_published_totals_and_active_parameters():
    # model cards: Mixtral 46.7B / 12.9B, 8x22B 141B / 39B, Qwen3 30.5B / 3.3B and 235B / 22B, DeepSeek-V3
    # 671B / 37B (its README_WEIGHTS: 36.7B without the 0.93B embedding table)
    expected = {"mixtral-8x7b": (46.7, 12.9), "mixtral-8x22b": (140.6, 39.2), "qwen3-30b-a3b": (30.5, 3.4),
                "qwen3-235b-a22b": (235.1, 22.2), "deepseek-v3": (671.0, 37.6)}  # fmt: skip
    for name, (total, active) in expected.items():
        spec = get_model(name)
        assert round(moe.total_params(spec) / 1e9, 1) == total, name
        assert round(moe.active_params(spec) / 1e9, 1) == active, name
    ds = get_model("deepseek-v3")
    assert round((moe.active_params(ds) - ds.vocab_size * ds.hidden_size) / 1e9, 1) == 36.6


def test_exact_counts_worked_by_hand():
    m = get_model("mixtral-8x7b")
    # layer: attention 2*4096*4096 + 2*4096*1024 = 41,943,040; 8 experts of 3*4096*14336 = 176,160,768;
    # router 32,768; norms 8,192 -> 1,451,270,144; x32 + 2*32000*4096 + 4096
    assert moe.total_params(m) == 32 * 1_451_270_144 + 262_144_000 + 4_096 == 46_702_792_704
    assert moe.expert_bytes(m, "fp16") == 2 * 176_160_768
    ds = get_model("deepseek-v3")
    # MLA: q_a 7168*1536 + 1536 + q_b 1536*128*192 + kv_a 7168*576 + 512 + kv_b 512*128*256 + o 128*128*7168
    assert (
        moe.attention_params(ds)
        == 11_010_048 + 1_536 + 37_748_736 + 4_128_768 + 512 + 16_777_216 + 117_440_512
    )
    assert moe.total_params(ds) == 671_026_419_200
    assert moe.moe_layers(ds) == 58 and moe.router_params(ds) == 256 * 7168 + 256


def test_kv_and_link_bytes():
    assert kv_bytes_per_token(get_model("mixtral-8x7b")) == 2 * 32 * 8 * 128 * 2 == 131_072
    assert kv_bytes_per_token(get_model("qwen3-30b-a3b"), "bf16") == 2 * 48 * 4 * 128 * 2
    ds = get_model("deepseek-v3")
    assert kv_bytes_per_token(ds) == moe.mla_kv_bytes_per_token(ds) == 61 * (512 + 64) * 2 == 70_272
    # latent query H*(c+r), new latent c+r, latent output H*c
    assert net_bytes_per_token_per_layer(ds) == 2 * (128 * 576 + 576 + 128 * 512) == 279_680
    # kv_b_proj on the attention pool: per-head query (128+64), latent, per-head value 128
    assert moe.mla_net_bytes_per_token_per_layer(ds, "fp16", "attention") == 2 * (128 * 192 + 576 + 128 * 128)
    # GQA MoE models move what a dense model of the same attention moves: (2 + 2/G) * e * d
    assert net_bytes_per_token_per_layer(get_model("mixtral-8x7b")) == (2 + 2 / 4) * 2 * 4096
    assert moe.afd_bytes_per_token_per_layer(ds, "fp8") == (8 * 7168, 8 * 7168)
    with pytest.raises(UserInputError, match="weights_on 'both'; valid: compute, attention"):
        moe.mla_net_bytes_per_token_per_layer(ds, "fp16", "both")


def _hf_config(spec: MoEModelSpec) -> dict:
    """The HF config.json of a catalog MoE model (what its repository publishes, shape fields only)."""
    common = {"vocab_size": spec.vocab_size, "hidden_size": spec.hidden_size, "num_hidden_layers": spec.num_layers,
              "num_attention_heads": spec.num_heads, "num_key_value_heads": spec.num_kv_heads,
              "intermediate_size": spec.intermediate_size, "max_position_embeddings": spec.max_position,
              "num_experts_per_tok": spec.moe.top_k, "tie_word_embeddings": False}  # fmt: skip
    if spec.family == "mixtral":
        return common | {"model_type": "mixtral", "num_local_experts": spec.moe.num_experts}
    if spec.family == "qwen3_moe":
        return common | {"model_type": "qwen3_moe", "num_experts": spec.moe.num_experts, "head_dim": spec.head_dim,
                         "moe_intermediate_size": spec.moe.expert_intermediate_size, "norm_topk_prob": True,
                         "decoder_sparse_step": 1, "mlp_only_layers": []}  # fmt: skip
    m = spec.mla
    return common | {
        "model_type": "deepseek_v3", "n_routed_experts": spec.moe.num_experts, "n_shared_experts": 1,
        "moe_intermediate_size": spec.moe.expert_intermediate_size, "first_k_dense_replace": 3, "n_group": 8,
        "topk_group": 4, "routed_scaling_factor": 2.5, "q_lora_rank": m.q_lora_rank, "kv_lora_rank": m.kv_lora_rank,
        "qk_nope_head_dim": m.qk_nope_head_dim, "qk_rope_head_dim": m.qk_rope_head_dim, "v_head_dim": m.v_head_dim,
    }  # fmt: skip


@pytest.mark.parametrize("name", MOE_NAMES)
def test_total_params_match_huggingface_on_the_meta_device(name):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    spec = get_model(name)
    config = transformers.AutoConfig.for_model(**_hf_config(spec))
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    # transformers keeps DeepSeek-V3's selection bias as a buffer; the checkpoint stores it, so we count it
    bias = sum(b.numel() for n, b in model.named_buffers() if n.endswith("e_score_correction_bias"))
    assert moe.total_params(spec) == sum(p.numel() for p in model.parameters()) + bias
    assert spec_from_hf_config(config.to_dict() | _hf_config(spec), name=name) == _same_source(spec)


def _same_source(spec: MoEModelSpec) -> MoEModelSpec:
    return dataclasses.replace(spec, source=f"HF config.json ({spec.family})")


def test_hf_config_layer_patterns():
    base = _hf_config(get_model("qwen3-30b-a3b")) | {"num_hidden_layers": 6}
    spec = spec_from_hf_config(base | {"decoder_sparse_step": 2, "mlp_only_layers": [5]})
    assert spec.moe.dense_layers == (0, 2, 4, 5) and moe.moe_layers(spec) == 2 and spec.qk_norm
    ds = spec_from_hf_config(_hf_config(get_model("deepseek-v3")) | {"q_lora_rank": None})
    # q_proj 7168 x 128*192 replaces q_a (7168 x 1536), its norm and q_b (1536 x 128*192)
    q_lora = 7168 * 1536 + 1536 + 1536 * 128 * 192
    assert (
        moe.attention_params(ds) == moe.attention_params(get_model("deepseek-v3")) - q_lora + 7168 * 128 * 192
    )
    mixtral = _hf_config(get_model("mixtral-8x7b"))
    del mixtral["num_local_experts"]
    with pytest.raises(UserInputError, match="missing 'num_local_experts'"):
        spec_from_hf_config(mixtral)
    with pytest.raises(UserInputError, match="top_k 9 > num_experts 8"):
        spec_from_hf_config(mixtral | {"num_local_experts": 8, "num_experts_per_tok": 9})


def test_bad_moe_fields_are_one_line_errors():
    for change, message in [
        ({"top_k": 5}, "top_k 5 > num_experts 4"),
        ({"scoring": "relu"}, "scoring 'relu'; valid: softmax, sigmoid"),
        ({"n_group": 3}, "divisible by n_group"),
        ({"n_group": 2, "topk_group": 1, "top_k": 3}, "exceeds the experts of 1 groups"),
        ({"num_shared_experts": -1}, "num_shared_experts must be an int >= 0"),
        ({"expert_intermediate_size": 0}, "expert_intermediate_size must be a positive int"),
        ({"dense_layers": (2,)}, r"dense_layers \(2,\) must be distinct layers in 0..1"),
    ]:
        with pytest.raises(UserInputError, match=message):
            tiny(**change)
    with pytest.raises(UserInputError, match="kv_lora_rank must be a positive int"):
        MLASpec(None, 0, 16, 8, 16)
    with pytest.raises(UserInputError, match="are the mixture-of-experts families"):
        MoEModelSpec(**(TINY | {"family": "llama"}), moe=MoESpec(4, 2, 32))
    with pytest.raises(UserInputError, match="are the mixture-of-experts families"):
        ModelSpec(**TINY)  # a MoE family without experts


def test_dense_only_quantities_refuse_moe_models():
    spec = get_model("mixtral-8x7b")
    for fn in (layer_matmul_params, dense_flops_per_token, hf_config):
        with pytest.raises(UserInputError, match="mixture-of-experts model: .* dense models only"):
            fn(spec)
    assert not same_layer_shape(spec, get_model("llama3-8b"))  # same attention and width, but experts
    assert same_layer_shape(spec, get_model("mixtral-8x7b"))


def test_dense_models_read_no_moe_fields():
    dense = [s for s in list_models() if s.moe is None]
    assert dense and all(s.mla is None and not s.qk_norm for s in dense)
    assert [s.name for s in list_models() if moe.is_moe(s)] == list(MOE_NAMES)
    dense_sizes = derived_sizes(get_model("llama3-70b"))
    assert dense_sizes["active_params"] is None and dense_sizes["dense_flops_per_token"] > 0
    assert derived_sizes(get_model("deepseek-v3"))["dense_flops_per_token"] is None


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    return err


@pytest.mark.parametrize(
    "argv, path",
    [
        (["simulate", "--model", "mixtral-8x7b", "--system", "homogeneous", "--compute", "4xH100",
          "--trace", "azure-conv", "--scheduler", "vllm"], "models dense models only"),
        (["profile", "--model", "qwen3-30b-a3b", "--out", "unused"], "dense models only"),
    ],
)  # fmt: skip
def test_modeled_commands_refuse_moe_models(capsys, argv, path):
    assert path in _one_line_error(capsys, argv)


def test_model_paths_refuse_moe_models():
    from lamina_bench.catalog.devices import DeviceMix, get_device
    from lamina_bench.model import memory, roofline
    from lamina_bench.model.ops.layer import LayerShape
    from lamina_bench.model.scheduler import Scheduler
    from lamina_bench.model.system import SystemConfig

    spec, h100 = get_model("qwen3-235b-a22b"), get_device("H100")
    calls = [
        (
            lambda: SystemConfig("homogeneous", spec, DeviceMix(8, h100), scheduler=Scheduler("vllm")),
            "scheduler",
        ),
        (lambda: memory.pool_memory(spec, h100, 8, "fp16", 8), "the memory plan"),
        (lambda: roofline.attention_layer_bytes(spec, "fp16", 8, 1000), "the roofline"),
        (lambda: roofline.dense_layer_bytes(spec, "fp16", 8), "dense models only"),
        (lambda: LayerShape.of(spec), "the operator model"),
    ]
    for call, path in calls:
        with pytest.raises(UserInputError, match=path):
            call()


def test_models_command_lists_moe_columns(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line and line.split()[0] in
            ("llama3-70b", "mixtral-8x7b", "deepseek-v3")}  # fmt: skip
    assert rows["llama3-70b"][5] == "-" and rows["llama3-70b"][7] == "-"  # experts, active: dense
    assert rows["mixtral-8x7b"][3:8] == ["32/8", "14336", "2/8", "46.70", "12.88"]
    assert rows["deepseek-v3"][3:8] == ["128/MLA", "2048", "8/256+1", "671.03", "37.55"]
    assert rows["deepseek-v3"][9:11] == ["70,272", "279,680"]
    assert main(["models", "--json"]) == 0
    entries = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    assert entries["mixtral-8x7b"]["moe"]["top_k"] == 2 and entries["llama3-70b"]["active_params"] is None
    assert entries["deepseek-v3"]["afd_bytes_per_token_per_layer"] == 2 * 8 * 7168 * 2


@pytest.mark.parametrize("kind", ["mixtral", "deepseek-v3"])
def test_link_bytes_against_what_the_reference_sends(tmp_path, kind):
    """The catalog's attention-offload bytes against the tensors the reference's converter ships per cut."""
    from reference_impl.checkpoint import load_model
    from reference_impl.converter import split_model
    from tests.reference_impl.tiny_models import build_tiny_model

    folder = build_tiny_model(kind, tmp_path / kind, seed=0)
    spec = spec_from_hf_config(json.loads((folder / "config.json").read_text()), name=kind)
    cut = split_model(load_model(folder)).cut_values(1, torch.float32)[0]
    sent = sum(v.nbytes for v in cut if v.role != "live")  # q, k, v out and the attention output back
    if kind == "mixtral":  # GQA: exactly (2 q + 2 kv) * e
        assert sent == net_bytes_per_token_per_layer(spec, "fp32") == 4 * (2 * 64 + 2 * 32)
        return
    # MLA (H 4, c 16, r 8): e * (H (c + r) + (c + r) + H c) = 4 * 184; the reference's attention call also
    # ships the value as a second copy of the latent + RoPE key (c + r) and the output with its r RoPE
    # features per head (H r): 4 * (24 + 32) more
    assert net_bytes_per_token_per_layer(spec, "fp32") == 4 * (4 * 24 + 24 + 4 * 16) == 736
    assert sent == 736 + 4 * (24 + 4 * 8)


def test_profile_refuses_a_moe_checkpoint_before_measuring(tmp_path, capsys):
    from tests.reference_impl.tiny_models import build_tiny_model

    folder = build_tiny_model("mixtral", tmp_path / "mixtral")
    capsys.readouterr()  # drop save_pretrained's progress output
    err = _one_line_error(capsys, ["profile", "--model", str(folder), "--out", str(tmp_path / "out")])
    assert "MoE is not modeled yet by profiles" in err and not (tmp_path / "out").exists()
