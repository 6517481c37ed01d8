"""reference_impl.moe: routing worked by hand, each router and block against transformers, tiny Mixtral and
Qwen3-MoE checkpoints against transformers' logits, the converter and TP=2 on them, bad configs."""

import json
import shutil

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from reference_impl.checkpoint import config_from_hf, hf_param_name, load_model
from reference_impl.converter import split_model
from reference_impl.errors import ConfigError
from reference_impl.moe import MoEConfig, route_grouped_sigmoid, route_softmax
from tests.reference_impl.tiny_models import (
    MOE_KINDS,
    build_tiny_hf_model,
    build_tiny_model,
    free_port,
    hf_logits,
    run_script,
    script_steps,
    split_forward,
    tp_worker,
)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """kind -> (checkpoint folder, the HF model it was saved from)."""
    root = tmp_path_factory.mktemp("tiny_moe")
    return {
        kind: (build_tiny_model(kind, root / kind, seed=1), build_tiny_hf_model(kind, seed=1))
        for kind in MOE_KINDS
    }


def close(actual, expected):
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------- routing
def test_softmax_routing_by_hand():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    weights, experts = route_softmax(logits, 2, renormalise=True)
    assert experts.tolist() == [[1, 2]]
    # Mixtral: softmax over the two chosen logits, e^3 / (e^3 + e^2) and e^2 / (e^3 + e^2)
    assert weights[0].tolist() == pytest.approx([0.731059, 0.268941], rel=1e-5)
    assert torch.allclose(weights, torch.topk(logits, 2).values.softmax(-1))
    # Qwen3-MoE without norm_topk_prob: the softmax over all 4, e^3 / (1 + e + e^2 + e^3) = 0.643914
    weights, _ = route_softmax(logits, 2, renormalise=False)
    assert weights[0].tolist() == pytest.approx([0.643914, 0.236883], rel=1e-5)


def test_grouped_sigmoid_routing_by_hand():
    # scores sigmoid([0, 2, 1, 1.5]) = [0.5, 0.880797, 0.731059, 0.817574]; the bias lifts expert 2 to 1.231059
    logits, bias = torch.tensor([[0.0, 2.0, 1.0, 1.5]]), torch.tensor([0.0, 0.0, 0.5, 0.0])
    cfg = MoEConfig(4, 2, 8, "sigmoid", n_group=2, topk_group=1, routed_scaling_factor=2.5, score_bias=True)
    weights, experts = route_grouped_sigmoid(logits, bias, cfg)
    # group {0, 1}: 0.5 + 0.880797 = 1.380797 < group {2, 3}: 1.231059 + 0.817574 = 2.048633, so experts 2
    # and 3 although expert 1 scores higher than 3; weights = unbiased scores renormalised, times 2.5
    assert sorted(experts[0].tolist()) == [2, 3]
    got = dict(zip(experts[0].tolist(), weights[0].tolist(), strict=True))
    total = 0.731059 + 0.817574
    assert got[2] == pytest.approx(2.5 * 0.731059 / total, rel=1e-5)
    assert got[3] == pytest.approx(2.5 * 0.817574 / total, rel=1e-5)
    # one group: the two best biased scores, experts 2 (1.231059) and 1 (0.880797)
    _, experts = route_grouped_sigmoid(logits, bias, MoEConfig(4, 2, 8, "sigmoid", score_bias=True))
    assert sorted(experts[0].tolist()) == [1, 2]


@pytest.mark.parametrize("kind", ["mixtral", "qwen3_moe", "deepseek_v3"])
def test_routers_match_transformers(kind):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    x = torch.randn(40, 64)
    if kind == "deepseek_v3":
        hf_cfg = transformers.DeepseekV3Config(hidden_size=64, n_routed_experts=16, num_experts_per_tok=4,
                                               n_group=4, topk_group=2, routed_scaling_factor=2.5)  # fmt: skip
        router = transformers.models.deepseek_v3.modeling_deepseek_v3.DeepseekV3TopkRouter(hf_cfg)
        router.e_score_correction_bias.copy_(0.1 * torch.randn(16))
        cfg = MoEConfig(
            16, 4, 8, "sigmoid", n_group=4, topk_group=2, routed_scaling_factor=2.5, score_bias=True
        )
    elif kind == "qwen3_moe":
        hf_cfg = transformers.Qwen3MoeConfig(
            hidden_size=64, num_experts=8, num_experts_per_tok=3, norm_topk_prob=True
        )
        router = transformers.models.qwen3_moe.modeling_qwen3_moe.Qwen3MoeTopKRouter(hf_cfg)
        cfg = MoEConfig(8, 3, 8, round_weights=True)
    else:
        hf_cfg = transformers.MixtralConfig(hidden_size=64, num_local_experts=8, num_experts_per_tok=2)
        router = transformers.models.mixtral.modeling_mixtral.MixtralTopKRouter(hf_cfg)
        cfg = MoEConfig(8, 2, 8)
    with torch.no_grad():
        router.weight.copy_(0.3 * torch.randn_like(router.weight))
        _, hf_weights, hf_experts = router(x)
        ours = _our_router(cfg, router)
        weights, experts = ours(x)
    order, hf_order = experts.argsort(-1), hf_experts.argsort(-1)  # DeepSeek's top-k is unsorted
    assert torch.equal(experts.gather(1, order), hf_experts.gather(1, hf_order))
    close(weights.gather(1, order), hf_weights.gather(1, hf_order))


def _our_router(cfg, hf_router):
    from reference_impl.moe import Router

    router = Router(cfg, 64, None, torch.float32)
    router.weight.copy_(hf_router.weight)
    if cfg.score_bias:
        router.score_bias.copy_(hf_router.e_score_correction_bias)
    return router


def test_block_loop_equals_a_per_token_sum():
    """The expert loop (index_add over routed tokens) against the definition, token by token."""
    from reference_impl.model import _TP
    from reference_impl.moe import MoEBlock

    torch.manual_seed(1)
    cfg = MoEConfig(6, 2, 16, "sigmoid", num_shared_experts=1, n_group=3, topk_group=2, score_bias=True)
    block = MoEBlock(cfg, 32, _TP(0, 1, None, None, torch.float32))
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(0.3 * torch.randn_like(p))
        x = torch.randn(9, 32)
        weights, experts = block.router(x)
        expected = torch.stack([
            sum(weights[t, s] * block.experts[int(experts[t, s])](x[t]) for s in range(2)) + block.shared(x[t])
            for t in range(9)
        ])  # fmt: skip
        close(block(x), expected)


# -------------------------------------------------------------------------------- checkpoints
def test_config_from_hf_reads_the_moe_fields(ckpts):
    cfg = config_from_hf(json.loads((ckpts["qwen3-moe"][0] / "config.json").read_text()))
    assert (cfg.arch, cfg.qk_norm, cfg.intermediate_size, cfg.head_dim) == ("qwen3_moe", True, 96, 16)
    assert cfg.moe == MoEConfig(4, 2, 32, norm_topk_prob=True, round_weights=True, dense_layers=(1,))
    cfg = config_from_hf(json.loads((ckpts["mixtral"][0] / "config.json").read_text()))
    assert (cfg.arch, cfg.qk_norm, cfg.moe) == ("mixtral", False, MoEConfig(4, 2, 32))
    assert hf_param_name("mixtral", "layers.1.mlp.experts.3.w_up.weight") == (
        "model.layers.1.block_sparse_moe.experts.3.w3.weight"
    )
    assert hf_param_name("qwen3_moe", "layers.0.mlp.router.weight") == "model.layers.0.mlp.gate.weight"


@pytest.mark.parametrize("kind", MOE_KINDS)
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
    assert logits[0].abs().max() > 1.0


@pytest.mark.parametrize("kind", MOE_KINDS)
def test_routing_matters_in_the_hf_check(ckpts, kind):
    """Swapping two experts' weights changes the logits, so the match above tests routing and loading."""
    path, hf = ckpts[kind]
    model = load_model(path)
    experts = model.layers[0].mlp.experts
    with torch.no_grad():
        for a, b in zip(experts[0].parameters(), experts[1].parameters(), strict=True):
            tmp = a.clone()
            a.copy_(b)
            b.copy_(tmp)
    tokens = list(range(3, 60, 4))
    (logits,) = run_script(model, [{"s": tokens}])
    assert (logits - hf_logits(hf, tokens)).abs().max() > 1e-3


def test_sharded_moe_checkpoint_loads_the_same(ckpts, tmp_path):
    sharded = build_tiny_model("mixtral", tmp_path / "sharded", seed=1, max_shard_size="100KB")
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    one, many = load_model(ckpts["mixtral"][0]), load_model(sharded)
    for (name, a), (_, b) in zip(one.named_parameters(), many.named_parameters(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("kind", MOE_KINDS)
def test_converter_splits_moe_models_without_special_cases(ckpts, kind):
    model = load_model(ckpts[kind][0])
    split = split_model(model)
    assert split.layers == [0, 1]
    for a, b in zip(run_script(model, script_steps()), run_script(model, script_steps(), split_forward(split)),
                    strict=True):  # fmt: skip
        assert torch.equal(a, b)
    # what crosses a cut is what a dense model sends: residual (d) + RoPE cos, sin (D each) + q (d) + k, v
    # (d/2 each) + attention output (d): 64 + 32 + 64 + 64 + 64 = 288 elements per token, fp16
    assert split.cut_bytes(3, torch.float16) == [3 * 288 * 2, 3 * 256 * 2]  # the last cut has no RoPE


def test_tensor_parallel_two_processes_equal_one(ckpts, tmp_path):
    paths = [str(ckpts[kind][0]) for kind in MOE_KINDS]
    mp.spawn(tp_worker, args=(2, free_port(), paths, str(tmp_path)), nprocs=2, join=True)
    for i, kind in enumerate(MOE_KINDS):
        expected = run_script(load_model(paths[i]), script_steps())
        for rank in range(2):
            got = torch.load(tmp_path / f"{i}_{rank}.pt", weights_only=True)
            for a, b in zip(got["logits"] + got["split_logits"], expected + expected, strict=True):
                close(a, b)
        shard = load_model(paths[i], tp_rank=1, tp_size=2).layers[0].mlp.experts[2]
        assert tuple(shard.w_gate.weight.shape) == (16, 64) and tuple(shard.w_down.weight.shape) == (
            64,
            16,
        ), kind


# ------------------------------------------------------------------------------------ bad inputs
def _config(ckpts, kind="qwen3-moe"):
    return json.loads((ckpts[kind][0] / "config.json").read_text())


@pytest.mark.parametrize(
    "kind, changes, message",
    [
        ("mixtral", {"num_experts_per_tok": 5}, "top_k 5 exceeds the 4 experts"),
        ("mixtral", {"num_local_experts": 0}, "'num_local_experts' must be an integer >= 1, got 0"),
        ("mixtral", {"sliding_window": 4096}, "sliding-window attention is not supported"),
        ("mixtral", {"hidden_act": "gelu"}, "unsupported hidden_act 'gelu'"),
        ("qwen3-moe", {"norm_topk_prob": "yes"}, "'norm_topk_prob' must be true or false, got 'yes'"),
        ("qwen3-moe", {"mlp_only_layers": [7]}, r"'mlp_only_layers' \[7\] names layers outside 0..1"),
        ("qwen3-moe", {"mlp_only_layers": "all"}, "'mlp_only_layers' must be a list of layer indices"),
        ("qwen3-moe", {"decoder_sparse_step": 0}, "'decoder_sparse_step' must be an integer >= 1, got 0"),
        ("qwen3-moe", {"attention_bias": True}, "attention_bias=true is not supported"),
        (
            "qwen3-moe",
            {"moe_intermediate_size": None},
            "'moe_intermediate_size' must be an integer >= 1, got None",
        ),
    ],
)
def test_bad_moe_configs_are_config_errors(ckpts, kind, changes, message):
    with pytest.raises(ConfigError, match=message):
        config_from_hf(_config(ckpts, kind) | changes)


def test_missing_or_misshapen_expert_tensor(ckpts, tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(ckpts["mixtral"][0], path)
    tensors = load_file(path / "model.safetensors")
    del tensors["model.layers.1.block_sparse_moe.experts.3.w2.weight"]
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(ConfigError, match="no tensor 'model.layers.1.block_sparse_moe.experts.3.w2.weight'"):
        load_model(path)
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(cfg | {"num_local_experts": 5}))
    with pytest.raises(
        ConfigError, match=r"block_sparse_moe.gate.weight' has shape \(4, 64\), config implies \(5, 64\)"
    ):
        load_model(path)
    (path / "config.json").write_text(json.dumps(cfg | {"num_local_experts": 3, "num_experts_per_tok": 1}))
    with pytest.raises(ConfigError, match="the checkpoint holds experts 0..3 per layer, config.json names 3"):
        load_model(path)  # more experts stored than the config routes to


def test_tp_needs_divisible_expert_widths(ckpts):
    from reference_impl.model import check_tp

    cfg = config_from_hf(_config(ckpts, "mixtral") | {"intermediate_size": 31})
    check_tp(cfg, 1)
    with pytest.raises(ConfigError, match="expert_intermediate_size=31 is not divisible by tp_size=2"):
        check_tp(cfg, 2)
