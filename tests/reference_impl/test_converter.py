"""reference_impl.converter: fx split of the decoder into n+1 slices around its n attention calls."""

import pytest
import torch
from torch import nn

from reference_impl.checkpoint import load_model
from reference_impl.converter import split_model
from reference_impl.errors import ConfigError
from reference_impl.model import attention
from tests.reference_impl.tiny_models import KINDS, build_tiny_model, run_script, script_steps, split_forward


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {kind: load_model(build_tiny_model(kind, root / kind, seed=2)) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_split_run_equals_forward_exactly(models, kind):
    model = models[kind]
    split = split_model(model)
    assert len(split.slices) == model.config.num_layers + 1
    assert split.layers == list(range(model.config.num_layers))
    # prefill of two prompts in one step, then 3 decode steps: KV caches fill through the split path
    expected = run_script(model, script_steps())
    for got, ref in zip(run_script(model, script_steps(), split_forward(split)), expected, strict=True):
        assert torch.equal(got, ref)


def test_split_bf16_equals_forward_exactly(models, tmp_path):
    model = load_model(build_tiny_model("llama31-gqa", tmp_path / "m", seed=2), dtype=torch.bfloat16)
    got = run_script(model, script_steps(), split_forward(split_model(model)))
    for a, b in zip(got, run_script(model, script_steps()), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_slices_have_no_attention_and_share_weights(models, kind):
    model = models[kind]
    split = split_model(model)
    first = [n.target for n in split.slices[0].graph.nodes if n.op == "placeholder"]
    assert first == ["input_ids", "positions"]
    for gm in split.slices:
        assert not any(n.target is attention for n in gm.graph.nodes)
    # the slices point at the model's own modules: no copy of the weights
    assert split.slices[1].get_submodule("layers.0.attn.wo") is model.layers[0].attn.wo


def test_cut_contents_llama31_gqa(models):
    """d=64, Hq=4, Hkv=2 (G=2), D=16, 3 layers, fp16 (e=2), T=5 tokens."""
    split = split_model(models["llama31-gqa"])
    cuts = split.cut_values(5, torch.float16)
    assert len(cuts) == 3
    for cut in cuts:
        shapes = {v.role: v.shape for v in cut if v.role != "live"}
        assert shapes == {"q": (5, 4, 16), "k": (5, 2, 16), "v": (5, 2, 16), "attn_out": (5, 4, 16)}
        # paper section 3: network bytes per token per layer (2 + 2/G) * e * d = 3 * 2 * 64 = 384
        assert sum(v.nbytes for v in cut if v.role != "live") == 5 * 384
    # live: the residual stream (5, 64), plus RoPE cos and sin (5, 16) while a later layer still needs them
    assert sorted(v.shape for v in cuts[0] if v.role == "live") == [(5, 16), (5, 16), (5, 64)]
    assert sorted(v.shape for v in cuts[1] if v.role == "live") == [(5, 16), (5, 16), (5, 64)]
    assert [v.shape for v in cuts[2] if v.role == "live"] == [(5, 64)]
    assert split.cut_bytes(5, torch.float16) == [5 * 2 * (64 + 32) + 5 * 384] * 2 + [5 * 2 * 64 + 5 * 384]
    assert split.cut_bytes(5, torch.float32) == [2 * b for b in split.cut_bytes(5, torch.float16)]


def test_cut_contents_opt(models):
    """OPT has learned positions: only the residual stream stays live. MHA: (2 + 2) * e * d per token."""
    split = split_model(models["opt"])
    assert split.live_names == [["add_1"], ["add_3"]]  # embedding + positions, then layer 0's output
    assert split.cut_bytes(7, torch.float16) == [7 * 2 * 64 + 7 * 4 * 2 * 64] * 2


def test_cut_shapes_match_a_real_run(models):
    """Shapes are probed at 1 and 2 tokens; check the extrapolation against an actual 9-token step."""
    model = models["llama2-mha"]
    split = split_model(model)
    seen = []

    def attend(q, k, v, layer):
        seen.append([tuple(t.shape) for t in (q, k, v)])
        return torch.zeros_like(q)

    with torch.no_grad():
        split.run(torch.arange(9), torch.arange(9), attend)
    for cut, shapes in zip(split.cut_values(9, torch.float32), seen, strict=True):
        assert [v.shape for v in cut if v.role in ("q", "k", "v")] == shapes


def test_bad_inputs_rejected(models):
    class NoAttention(nn.Module):
        def forward(self, input_ids, positions, ctx):
            return input_ids * 2

    with pytest.raises(ConfigError, match="no call to reference_impl.model.attention"):
        split_model(NoAttention())
    with pytest.raises(ConfigError, match="num_tokens must be >= 1"):
        split_model(models["opt"]).cut_bytes(0, torch.float16)
