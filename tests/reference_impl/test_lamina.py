"""The Lamina runtime (reference_impl/lamina/): greedy tokens equal to the homogeneous baseline's and
transformers', measured link bytes, SIGKILL recovery, and torchrun against the spawning launcher.

Process runs start 3-4 processes over gloo on 127.0.0.1 (about 5 s each on 2 cores); each distinct
configuration runs once per module. The threads launcher runs the same workers as threads of this
process, so the full cross-product of modes and models stays cheap.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from reference_impl.config import GenerateConfig
from reference_impl.distributed import free_port
from reference_impl.engine import Request
from reference_impl.errors import ConfigError
from reference_impl.homogeneous import generate
from reference_impl.lamina import LaminaConfig, generate_lamina
from reference_impl.lamina.__main__ import main
from reference_impl.transport import HEADER_BYTES
from tests.reference_impl.tiny_models import build_tiny_hf_model, build_tiny_model, hf_logits

KINDS = ("llama31-gqa", "opt")  # GQA (G = 2, 3 layers) and MHA (G = 1, 2 layers); d = 64, fp32


def _requests() -> list[Request]:
    """10 requests, prompts of 1..24 tokens, arriving over 7 steps while earlier ones decode."""
    rng = random.Random(7)
    lengths = [1, 24, 5, 13, 2, 9, 17, 3, 11, 6]
    arrivals = [0, 0, 0, 1, 1, 2, 3, 4, 5, 6]
    return [
        Request(
            i, tuple(rng.randrange(256) for _ in range(n)), max_new_tokens=rng.randint(3, 9), arrival_step=a
        )
        for i, (n, a) in enumerate(zip(lengths, arrivals, strict=True))
    ]


REQUESTS = _requests()


def _hf_greedy(hf_model, prompt: tuple[int, ...], max_new_tokens: int) -> tuple[int, ...]:
    ids = list(prompt)
    for _ in range(max_new_tokens):
        ids.append(int(hf_logits(hf_model, ids)[-1].argmax()))
    return tuple(ids[len(prompt) :])


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("lamina_models")
    return {kind: str(build_tiny_model(kind, root / kind, seed=0)) for kind in KINDS}


@pytest.fixture(scope="module")
def expected(models) -> dict[str, list[tuple[int, ...]]]:
    """transformers' greedy tokens per request; the homogeneous baseline must agree before Lamina is
    judged."""
    out = {}
    for kind in KINDS:
        hf_model = build_tiny_hf_model(kind, seed=0)
        tokens = [_hf_greedy(hf_model, r.prompt_ids, r.max_new_tokens) for r in REQUESTS]
        homogeneous = generate(GenerateConfig(model_dir=models[kind], ignore_eos=True), REQUESTS)
        assert [c.output_ids for c in homogeneous.completions] == tokens
        out[kind] = tokens
    return out


@pytest.fixture(scope="module")
def lamina(models):
    """lamina(kind, **options) -> LaminaRun, each configuration run once per module."""
    cache = {}

    def run(kind: str, **options):
        key = (kind, tuple(sorted(options.items())))
        if key not in cache:
            options.setdefault("attention_workers", 2)
            cfg = LaminaConfig(model_dir=models[kind], ignore_eos=True, **options)
            cache[key] = generate_lamina(cfg, REQUESTS)
        return cache[key]

    return run


def _tokens(run) -> list[tuple[int, ...]]:
    return [c.output_ids for c in run.completions]


# ---- token parity over gloo ------------------------------------------------------------------------

PROCESS_CASES = {
    "1c+2a": ("llama31-gqa", {}),
    "1c+2a-opt": ("opt", {}),
    "ping-pong": ("opt", {"pipeline_batches": 2}),
    "rotational-3-batches-2-replicas": ("llama31-gqa", {"pipeline_batches": 3, "compute_workers": 2}),
    "attention-split": ("llama31-gqa", {"attention_split": True}),
    "tp2": ("llama31-gqa", {"compute_workers": 2}),
}


SLOW_PROCESS_CASES = ("1c+2a-opt", "attention-split")  # threads cover them in make test


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=pytest.mark.slow if c in SLOW_PROCESS_CASES else ()) for c in PROCESS_CASES],
)
def test_processes_over_gloo_give_the_reference_tokens(case, lamina, expected):
    kind, options = PROCESS_CASES[case]
    run = lamina(kind, **options)
    assert _tokens(run) == expected[kind]
    assert [c.request_id for c in run.completions] == [r.request_id for r in REQUESTS]
    assert (
        max(it.decode_seqs for it in run.engine.iterations) >= 3
    )  # batches big enough to fill 3 micro-batches
    assert not run.recoveries


def test_every_worker_reports_its_time_breakdown(lamina):
    run = lamina("llama31-gqa", pipeline_batches=3, compute_workers=2)
    assert [(w.rank, w.role) for w in run.workers] == [
        (0, "compute"),
        (1, "compute"),
        (2, "attention"),
        (3, "attention"),
    ]
    for w in run.workers:
        steps = [s for s in w.steps if s.kind == "decode"]
        assert len(steps) == sum(1 for it in run.engine.iterations if it.decode_seqs)
        assert all(
            s.wall_s >= 0 and min(s.dense_s, s.attention_s, s.network_s, s.idle_s) >= 0 for s in w.steps
        )
        assert 0 < w.share("idle") < 1
    compute, attention = run.workers[1], run.workers[3]
    assert compute.total("dense") > 0 and compute.total("attention") == 0  # replica 1 never prefills
    assert attention.total("attention") > 0 and attention.total("dense") == 0


# ---- link bytes ------------------------------------------------------------------------------------


def test_link_bytes_per_token_per_layer_are_the_papers_formula(lamina):
    """(2 + 2/G) e d: q and the output d each, k and v d/G each (arXiv 2405.01814 v2).

    Tiny GQA Llama: G = 2, e = 4 (fp32), d = 64, so 3 * 4 * 64 = 768 bytes of payload per token per
    layer, exactly. On top, each message has the transport's fixed header (HEADER_BYTES = 480): one
    "qkv" and one "attn_out" message per route (here 1 compute rank x 2 attention workers) per layer
    per decode step.
    """
    run = lamina("llama31-gqa")
    assert run.expected_link_bytes_per_token_per_layer == 768
    assert run.link_payload_bytes_per_token_per_layer == 768
    decode_steps = sum(1 for it in run.engine.iterations if it.decode_seqs)
    assert run.decode_token_layers == run.engine.decode_tokens * 3
    for kind in ("qkv", "attn_out"):
        traffic = run.kind(kind)
        assert traffic.messages == decode_steps * 3 * 2
        assert (
            traffic.header_bytes
            == traffic.messages * HEADER_BYTES
            == traffic.messages * run.header_bytes_per_message
        )
    assert run.kind("qkv").payload_bytes == 2 * run.kind("attn_out").payload_bytes  # (d + 2 d/G) vs d, G = 2
    summary = run.summary()
    assert summary["link_payload_bytes_per_token_per_layer"] == 768
    assert json.loads(json.dumps(summary))["workers"][0]["role"] == "compute"


@pytest.mark.parametrize("dtype, elem_bytes", [("fp16", 2), ("bf16", 2)])
def test_link_bytes_scale_with_the_element_size(models, dtype, elem_bytes):
    # OPT is multi-head (G = 1): (2 + 2) e d; the split sends q and k/v separately, same bytes
    cfg = LaminaConfig(
        model_dir=models["opt"], attention_workers=2, attention_split=True, dtype=dtype, launcher="threads"
    )
    run = generate_lamina(cfg, REQUESTS[:4])
    assert run.link_payload_bytes_per_token_per_layer == 4 * elem_bytes * 64
    assert run.kind("qkv").messages == 0 and run.kind("q").messages == run.kind("new_kv").messages > 0


# ---- recovery --------------------------------------------------------------------------------------


def test_sigkilled_attention_worker_is_replaced_and_tokens_do_not_change(lamina, expected):
    run = lamina("llama31-gqa", kill_at=(2, 3))  # rank 2 = attention worker 1, killed in decode step 3
    assert _tokens(run) == expected["llama31-gqa"]
    (event,) = run.recoveries
    assert (event.dead_ranks, event.roles) == ((2,), ("attention",))
    assert event.rebuilt_tokens > 0 and event.rebuild_s > 0
    assert event.recovery_s == pytest.approx(event.regroup_s + event.rebuild_s + event.redo_s)
    assert 0 < event.recovery_s < 60
    assert [w.rank for w in run.workers] == [0, 1, 2]  # the replacement reports as rank 2
    summary = run.summary()
    assert summary["recoveries"][0]["recovery_s"] == event.recovery_s
    assert summary["total_recovery_s"] == run.recovery_s == event.recovery_s
    # the killed worker's byte counts died with it: no inexact per-token figure
    assert run.link_payload_bytes_per_token_per_layer is None
    assert summary["link_header_bytes_per_token_per_layer"] is None


@pytest.mark.slow
def test_sigkilled_compute_replica_is_replaced_from_the_checkpoint(lamina, expected):
    run = lamina("llama31-gqa", pipeline_batches=3, compute_workers=2, kill_at=(1, 2))
    assert _tokens(run) == expected["llama31-gqa"]
    (event,) = run.recoveries
    assert (event.dead_ranks, event.roles, event.rebuilt_tokens) == ((1,), ("compute",), 0)


# ---- torchrun --------------------------------------------------------------------------------------


def _loopback_env() -> dict[str, str]:
    env = dict(os.environ)
    names = {name for _, name in socket.if_nameindex()}
    if "lo" in names:
        env["GLOO_SOCKET_IFNAME"] = "lo"
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.slow  # ~6 s under torchrun; `make test-slow`
def test_torchrun_runs_the_same_generation_as_the_spawning_launcher(models, lamina, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps(
                {
                    "prompt_ids": list(r.prompt_ids),
                    "max_new_tokens": r.max_new_tokens,
                    "arrival_step": r.arrival_step,
                }
            )
            + "\n"
            for r in REQUESTS
        )
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "3"]
    rendezvous = ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    module = ["-m", "reference_impl.lamina", "--model-dir", models["llama31-gqa"], "--prompts", str(prompts)]
    options = ["--compute-workers", "1", "--attention-workers", "2", "--ignore-eos"]
    done = subprocess.run(
        torchrun + rendezvous + module + options,
        capture_output=True,
        text=True,
        timeout=240,
        env=_loopback_env(),
        cwd=Path.cwd(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [tuple(line["output_ids"]) for line in lines] == _tokens(lamina("llama31-gqa"))


# ---- threads launcher: every mode on both models ---------------------------------------------------

THREAD_CASES = {
    "1c+1a": {"attention_workers": 1},
    "1c+2a": {},
    "ping-pong": {"pipeline_batches": 2},
    "rotational-3": {"pipeline_batches": 3, "compute_workers": 2},
    "rotational-4-split": {"pipeline_batches": 4, "compute_workers": 3, "attention_split": True},
    "ping-pong-split": {"pipeline_batches": 2, "attention_split": True},
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", list(THREAD_CASES))
def test_threads_launcher_gives_the_reference_tokens(kind, case, lamina, expected):
    run = lamina(kind, launcher="threads", **THREAD_CASES[case])
    assert _tokens(run) == expected[kind]


def test_admission_is_by_the_attention_pools_capacity(models):
    """A pool of 5 blocks of 16 tokens per worker makes requests wait exactly as they do in the baseline."""
    homogeneous = generate(GenerateConfig(model_dir=models["opt"], num_blocks=5, ignore_eos=True), REQUESTS)
    cfg = LaminaConfig(
        model_dir=models["opt"], attention_workers=2, num_blocks=5, ignore_eos=True, launcher="threads"
    )
    run = generate_lamina(cfg, REQUESTS)

    def schedule(r):
        return [(it.decode_seqs, it.prefill_seqs, it.waiting, it.free_kv_tokens) for it in r.iterations]

    assert schedule(run.engine) == schedule(homogeneous)
    assert max(it.waiting for it in run.engine.iterations) > 0  # the pool, not arrivals, held them back
    assert _tokens(run) == [c.output_ids for c in homogeneous.completions]


# ---- configuration errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"compute_workers": 3, "pipeline_batches": 3}, "must be a multiple of 2"),
        ({"dtype": "fp8"}, "unknown dtype 'fp8'"),
        ({"launcher": "mpi"}, "unknown launcher 'mpi'"),
        ({"compute_workers": 2, "launcher": "threads"}, "threads launcher has no tensor parallelism"),
        ({"compute_workers": 2, "kill_at": (1, 0)}, "cannot be replaced"),
        ({"kill_at": (0, 1)}, "kill_at rank must be in 1..1"),
        ({"block_size": 12}, "power of two"),
    ],
)
def test_config_errors_name_the_problem(options, message):
    with pytest.raises(ConfigError, match=message):
        LaminaConfig(model_dir="unused", **options)


def test_more_workers_than_gpus_is_a_config_error(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    with pytest.raises(
        ConfigError, match="1 compute \\+ 2 attention workers need 3 GPUs on this machine, torch"
    ):
        LaminaConfig(model_dir="unused", attention_workers=2, device="cuda")
    LaminaConfig(model_dir="unused", attention_workers=1, device="cuda")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun: 2 of the 3 ranks on this machine
    LaminaConfig(model_dir="unused", attention_workers=2, device="cuda")


@pytest.mark.parametrize(
    "env, message",
    [
        ({"RANK": "0", "WORLD_SIZE": "2"}, "RANK and WORLD_SIZE are set but MASTER_ADDR, MASTER_PORT not"),
        ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "x"}, "must be integers"),
        ({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "RANK 2 is outside"),
    ],
)
def test_incomplete_torchrun_environment_is_one_line_error(monkeypatch, capsys, tmp_path, env, message):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["--model-dir", str(tmp_path), "--prompts", "unused.jsonl"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_layout_that_the_model_cannot_split_fails_before_spawning(models):
    cfg = LaminaConfig(model_dir=models["llama31-gqa"], attention_workers=3)  # 2 KV heads
    with pytest.raises(ConfigError, match="3 workers for 2 KV heads"):
        generate_lamina(cfg, REQUESTS)
    bad_token = [Request(0, (5, 300), 2)]
    with pytest.raises(ConfigError, match="token id 300 is outside the vocabulary"):
        generate_lamina(LaminaConfig(model_dir=models["opt"], launcher="threads"), bad_token)


def test_a_request_the_engine_rejects_stops_every_process_promptly(models):
    too_long = [Request(0, (1,) * 250, max_new_tokens=10)]  # 260 > 256 positions of the tiny model
    cfg = LaminaConfig(model_dir=models["opt"], attention_workers=2, comm_timeout_s=60)
    with pytest.raises(ConfigError, match="exceeds the model's maximum of 256 positions"):
        generate_lamina(cfg, too_long)
