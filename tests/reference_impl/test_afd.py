"""reference_impl.afd: the expert partition, the plan and the wire format worked by hand; dispatch + combine
against MoEBlock bit for bit; ping-pong order; token parity of whole runs (threads launcher) with the
homogeneous engine and transformers on tiny Mixtral, Qwen3-MoE and DeepSeek-V3 checkpoints for 1 and 2
attention workers and 1, 2 and num_experts expert workers; dispatch and combine bytes by hand; bad input.

The processes launcher (gloo, supervised) and the command line: tests/lamina_bench/test_cli_generate_afd.py.
"""

from __future__ import annotations

import pytest
import torch

from reference_impl.afd import AFDConfig, expert_ranges, generate_afd
from reference_impl.afd.attention_side import ping_pong
from reference_impl.afd.plan import Op, Phase, StepPlan
from reference_impl.afd.wire import Dispatch, outputs_by_expert, run_experts, split_for_workers
from reference_impl.config import GenerateConfig
from reference_impl.engine import Request
from reference_impl.errors import ConfigError
from reference_impl.homogeneous import generate
from reference_impl.lamina import LaminaConfig
from reference_impl.model import _TP
from reference_impl.moe import MoEBlock, MoEConfig, weighted_sum
from reference_impl.options import defaults
from tests.reference_impl.tiny_models import MLA_KIND, MOE_KINDS, build_tiny_hf_model, build_tiny_model

NEW_TOKENS = 6
PROMPT_LENS = (1, 5, 17, 9, 3)
ARRIVALS = (0, 0, 1, 3, 3)  # engine iterations: later requests join while others decode


# ------------------------------------------------------------------------------------ by hand
def test_expert_ranges_are_contiguous_and_balanced():
    assert expert_ranges(4, 1) == [(0, 4)]
    assert expert_ranges(4, 3) == [(0, 2), (2, 3), (3, 4)]  # the first 4 mod 3 = 1 worker holds one more
    assert expert_ranges(8, 8) == [(e, e + 1) for e in range(8)]
    with pytest.raises(ConfigError, match="--expert-workers 5 cannot share 4 routed experts; valid: 1..4"):
        expert_ranges(4, 5)


def test_plan_round_trip_and_micro_batches():
    plan = StepPlan(Op.STEP, 7, Phase.DECODE, 2, (4, 9, 2), (1, 1, 1), (11, 12, 13), ((9, 20),), (5,))
    assert StepPlan.decode(plan.encode()) == plan
    assert plan.micro_batch_bounds() == [(0, 2), (2, 3)]
    assert StepPlan(
        Op.STEP, micro_batches=2, seq_ids=(3,), query_lens=(1,), tokens=(8,)
    ).micro_batch_bounds() == [
        (0, 1),
        (1, 1),  # an empty micro-batch: it still dispatches (empty) at every MoE layer
    ]
    assert StepPlan.decode(StepPlan(Op.STOP).encode()).op == Op.STOP


def test_dispatch_by_hand():
    x = torch.arange(8.0).view(4, 2)  # token t = (2t, 2t + 1)
    experts = torch.tensor([[0, 2], [1, 0], [3, 2], [0, 1]])  # (T, k) chosen experts
    w0, w1 = split_for_workers(x, experts, [(0, 2), (2, 4)])
    # worker 0 (experts 0, 1): tokens 0, 1, 3 once each; expert 0 gets tokens 0, 1, 3 = rows 0, 1, 2,
    # expert 1 tokens 1, 3 = rows 1, 2
    assert w0.rows.tolist() == [[0, 1], [2, 3], [6, 7]]
    assert (w0.counts.tolist(), w0.index.tolist()) == ([3, 2], [0, 1, 2, 1, 2])
    # worker 1 (experts 2, 3): tokens 0, 2; expert 2 gets tokens 0, 2 = rows 0, 1, expert 3 token 2 = row 1
    assert w1.rows.tolist() == [[0, 1], [4, 5]]
    assert (w1.counts.tolist(), w1.index.tolist()) == ([2, 1], [0, 1, 1])
    assert w0.counts.dtype == w0.index.dtype == torch.int32
    # the expert side returns each pair's output in the order of index; combine splits it by expert
    doubled = run_experts([lambda r: 2 * r, lambda r: 3 * r], [w0])[0]  # experts 0 and 1
    by_expert = outputs_by_expert(doubled, w0, lo=0)
    assert by_expert[0].tolist() == [[0, 2], [4, 6], [12, 14]]
    assert by_expert[1].tolist() == [[6, 9], [18, 21]]


def _block(cfg: MoEConfig) -> MoEBlock:
    torch.manual_seed(0)
    block = MoEBlock(cfg, 32, _TP(0, 1, None, None, torch.float32))
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(0.3 * torch.randn_like(p))
    return block


@pytest.mark.parametrize(
    "cfg",
    [
        MoEConfig(4, 2, 16),  # Mixtral routing
        MoEConfig(8, 3, 16, "sigmoid", num_shared_experts=1, n_group=4, topk_group=2, score_bias=True),  # V3
    ],
    ids=["softmax", "grouped-sigmoid-shared"],
)
@pytest.mark.parametrize("workers", [1, 3])
def test_dispatch_and_combine_equal_moe_block_bit_for_bit(cfg, workers):
    """Two attention workers (the first 6 and the last 5 tokens) dispatch to the expert workers, which run
    each expert once on both workers' rows; the attention side's combine equals MoEBlock exactly."""
    block, ranges = _block(cfg), expert_ranges(cfg.num_experts, workers)
    x = torch.randn(11, 32)
    halves = (x[:6], x[6:])
    routes = [block.router(h) for h in halves]
    dispatches = [
        split_for_workers(h, experts, ranges) for h, (_, experts) in zip(halves, routes, strict=True)
    ]
    combined = [{} for _ in halves]  # per attention worker: expert -> outputs
    for w, (lo, hi) in enumerate(ranges):
        sent = [d[w] for d in dispatches]
        received = [Dispatch.from_message(*s.to_message()) for s in sent]
        for out, got, s in zip(combined, run_experts(block.experts[lo:hi], received), sent, strict=True):
            out.update(outputs_by_expert(got, s, lo))
    with torch.no_grad():
        afd = torch.cat([
            weighted_sum(h, w, e, cfg.num_experts, lambda i, _t, out=out: out[i])
            + (block.shared(h) if block.shared is not None else 0)
            for h, (w, e), out in zip(halves, routes, combined, strict=True)
        ])  # fmt: skip
        assert torch.equal(afd, block(x))


def test_ping_pong_interleaves_micro_batches_layer_by_layer():
    events = []

    class Pending:
        def __init__(self, j, layer):
            self.j, self.layer = j, layer

        def wait(self):
            events.append(("combine", self.j, self.layer))
            return {0: torch.tensor([float(self.layer)])}

    def run(j):
        total = torch.zeros(1)
        for layer in range(3):
            events.append(("dispatch", j, layer))
            total = total + (yield Pending(j, layer))[0]
        return total + j

    results = ping_pong([run(0), run(1)])
    assert [r.item() for r in results] == [3.0, 4.0]  # 0 + 1 + 2, plus the micro-batch index
    # micro-batch 1 dispatches layer 0 before micro-batch 0 waits for it: the two overlap
    assert events[:6] == [
        ("dispatch", 0, 0),
        ("dispatch", 1, 0),
        ("combine", 0, 0),
        ("dispatch", 0, 1),
        ("combine", 1, 0),
        ("dispatch", 1, 1),
    ]


# ------------------------------------------------------------------------------ whole runs
@pytest.fixture(scope="module", params=(*MOE_KINDS, MLA_KIND))
def case(request, tmp_path_factory):
    """(kind, folder, requests, transformers' greedy tokens, routed experts); the homogeneous engine agrees."""
    kind = request.param
    folder = tmp_path_factory.mktemp(kind)
    hf = build_tiny_hf_model(kind, seed=3)
    hf.save_pretrained(folder)
    hf.generation_config.eos_token_id = None  # ignore_eos below keeps an eos token; so must transformers
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, hf.config.vocab_size, (n,), generator=gen).tolist() for n in PROMPT_LENS]
    requests = [
        Request(i, tuple(p), NEW_TOKENS, a) for i, (p, a) in enumerate(zip(prompts, ARRIVALS, strict=True))
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
            expected.append(tuple(out[0, len(ids) :].tolist()))
    homogeneous = generate(GenerateConfig(model_dir=str(folder), ignore_eos=True), requests)
    assert [c.output_ids for c in homogeneous.completions] == expected
    num_experts = getattr(hf.config, "num_local_experts", None) or getattr(hf.config, "num_experts", None)
    num_experts = num_experts or hf.config.n_routed_experts
    return kind, str(folder), requests, expected, num_experts


# (attention workers, expert workers, micro-batches): every A in 1, 2 with every E in 1, 2, num_experts by
# default, each once with ping-pong; the other half of the matrix is marked slow
DEFAULT_LAYOUTS = {(1, 1, 1), (1, 2, 2), (1, "all", 1), (2, 1, 2), (2, 2, 1), (2, "all", 2)}
LAYOUTS = [
    pytest.param(
        a, e, p, marks=() if (a, e, p) in DEFAULT_LAYOUTS else pytest.mark.slow, id=f"A{a}-E{e}-P{p}"
    )
    for a in (1, 2)
    for e in (1, 2, "all")
    for p in (1, 2)
]


@pytest.mark.parametrize("attention_workers, expert_workers, pipeline_batches", LAYOUTS)
def test_same_tokens_as_the_homogeneous_engine_and_transformers(
    case, attention_workers, expert_workers, pipeline_batches
):
    kind, folder, requests, expected, num_experts = case
    workers = num_experts if expert_workers == "all" else expert_workers
    cfg = AFDConfig(
        model_dir=folder,
        attention_workers=attention_workers,
        expert_workers=workers,
        pipeline_batches=pipeline_batches,
        ignore_eos=True,
        launcher="threads",
    )
    run = generate_afd(cfg, requests)
    assert [c.output_ids for c in run.completions] == expected
    if attention_workers == 2:  # data parallel: both attention workers served requests
        assert run.traffic["hidden"].payload_bytes > 0


def test_requests_wait_for_kv_of_one_attention_worker(case):
    """2 attention workers of 2 blocks of 16 tokens: the 23-token request needs both blocks of one worker,
    so requests queue and join later, and the tokens do not change."""
    kind, folder, requests, expected, _ = case
    cfg = AFDConfig(
        model_dir=folder,
        attention_workers=2,
        expert_workers=2,
        pipeline_batches=2,
        block_size=16,
        num_blocks=2,
        ignore_eos=True,
        launcher="threads",
    )
    run = generate_afd(cfg, requests)
    assert [c.output_ids for c in run.completions] == expected
    assert max(it.waiting for it in run.engine.iterations) >= 1
    with pytest.raises(ConfigError, match="request 2 needs 23 KV tokens but the whole cache holds 16"):
        generate_afd(AFDConfig(model_dir=folder, block_size=16, num_blocks=1, launcher="threads"), requests)


# Mixtral tiny: d = 64, k = 2, fp32 (e = 4), 4 experts, 2 MoE layers
D_E = 64 * 4


@pytest.mark.parametrize("case", ["mixtral"], indirect=True)
@pytest.mark.parametrize("expert_workers", [1, 2, 4])
def test_dispatch_and_combine_bytes_by_hand(case, expert_workers):
    _, folder, requests, _, _ = case
    run = generate_afd(
        AFDConfig(model_dir=folder, expert_workers=expert_workers, ignore_eos=True, launcher="threads"),
        requests,
    )
    tokens = sum(len(r.prompt_ids) for r in requests) + len(requests) * (
        NEW_TOKENS - 1
    )  # the last is not fed back
    assert run.tokens == tokens and run.moe_layers == 2
    # combine: one output per (token, chosen expert): k d e = 512 bytes per token per MoE layer, always
    assert (
        run.bytes_per_token_per_moe_layer("combine") == 2 * D_E == run.formula_bytes_per_token_per_moe_layer
    )
    dispatch = run.bytes_per_token_per_moe_layer("dispatch")
    if expert_workers == 1:
        assert dispatch == D_E  # one copy per token: the single worker holds both its experts
    elif expert_workers == 4:
        assert dispatch == 2 * D_E  # each chosen expert on its own worker: k copies
    else:
        assert D_E < dispatch < 2 * D_E  # some tokens chose both experts of one worker
    # routing: 4 bytes per (token, expert) pair, plus 4 per expert of the receiving worker per message
    routing = run.traffic["routing"]
    per_message = 4 * (4 // expert_workers)
    assert routing.payload_bytes == 4 * 2 * tokens * 2 + per_message * routing.messages
    summary = run.summary()
    assert summary["combine_bytes_per_token"] == 2 * 2 * D_E  # two MoE layers
    assert summary["dispatch_bytes_per_token_per_moe_layer"] == dispatch


# ------------------------------------------------------------------------------ bad input
def test_defaults_are_the_other_systems_defaults():
    afd, lamina, homogeneous = defaults(AFDConfig), defaults(LaminaConfig), defaults(GenerateConfig)
    for name in ("attention_workers", "pipeline_batches"):
        assert afd[name] == lamina[name]
    for name in ("device", "dtype", "block_size", "num_blocks", "max_batch_size", "temperature", "seed"):
        assert afd[name] == homogeneous[name]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"expert_workers": 0}, "--expert-workers must be an integer >= 1, got 0"),
        ({"expert_workers": -2}, "--expert-workers must be an integer >= 1, got -2"),
        ({"attention_workers": 0}, "--attention-workers must be an integer >= 1, got 0"),
        ({"pipeline_batches": 3}, "--pipeline-batches 3 is not an AFD mode; valid: 1 (none), 2 (ping-pong)"),
        ({"launcher": "ray"}, "unknown launcher 'ray'; valid: processes, threads"),
    ],
)
def test_bad_options_are_config_errors(options, message):
    with pytest.raises(ConfigError) as err:
        AFDConfig(model_dir="unused", **options)
    assert str(err.value) == message


def test_bad_splits_and_dense_models_fail_before_any_worker_starts(tmp_path):
    mixtral = str(build_tiny_model("mixtral", tmp_path / "mixtral"))
    llama = str(build_tiny_model("llama31-gqa", tmp_path / "llama"))
    requests = [Request(0, (1, 2, 3), 2)]
    with pytest.raises(
        ConfigError, match=r"--expert-workers 5 exceeds the 4 routed experts of .*; valid: 1..4"
    ):
        generate_afd(AFDConfig(model_dir=mixtral, expert_workers=5), requests)
    with pytest.raises(
        ConfigError, match=r"--system afd needs a mixture-of-experts model .*dense llama model"
    ):
        generate_afd(AFDConfig(model_dir=llama), requests)
    with pytest.raises(ConfigError, match="token id 999 is outside the vocabulary"):
        generate_afd(AFDConfig(model_dir=mixtral), [Request(0, (999,), 2)])
