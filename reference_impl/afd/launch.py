"""Launching an AFD run: A attention + E expert workers as processes over gloo on 127.0.0.1, or threads.

`generate_afd(cfg, requests)` is the function behind `lamina-bench generate --system afd`. Bad input
(a dense model, more expert workers than routed experts, a prompt outside the vocabulary) is a
ConfigError before any process starts. The processes launcher runs every rank under a supervisor
(distributed.run_in_group): a rank that dies, or is silent for cfg.heartbeat_timeout_s, ends the run
with a one-line WorkerFailure naming it, its role and its stage, and every process is killed and reaped
first. There is no recovery: a dead expert worker's experts, or a dead attention worker's KV, exist
nowhere else. The threads launcher runs every rank as a thread of this process over InProcessTransport
(for tests: no process start-up).
"""

from __future__ import annotations

import contextlib
import os
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

from reference_impl import supervisor
from reference_impl.afd.attention_side import AttentionWorker, drop_routed_experts
from reference_impl.afd.config import AFDConfig, check_model, expert_ranges, moe_layers
from reference_impl.afd.executor import AFDExecutor, serve_worker
from reference_impl.afd.expert_side import ExpertWorker
from reference_impl.afd.results import AFDRun, KindTraffic
from reference_impl.checkpoint import load_model, read_config
from reference_impl.distributed import run_in_group
from reference_impl.dtypes import DTYPES
from reference_impl.engine import Engine, EngineRun, Request
from reference_impl.errors import ConfigError
from reference_impl.kv_accounting import blocks_for_requests
from reference_impl.prompts import check_vocab, sampling_params
from reference_impl.supervisor import Stage
from reference_impl.transport import InProcessTransport, TorchDistTransport

RUN_TIMEOUT_S = 3600.0  # a whole generation must finish within this (also a message's timeout)
THREAD_JOIN_S = 30.0  # threads launcher: how long the workers may take to stop after rank 0 is done


@dataclass(frozen=True)
class RankResult:
    """What a rank hands back: the bytes it sent per kind ([messages, payload, header]); rank 0 the run."""

    traffic: dict[str, list[int]] = field(default_factory=dict)
    engine: EngineRun | None = None
    tokens: int = 0


def _sent_by_kind(transport) -> dict[str, list[int]]:
    return {
        kind: [s.messages_sent, s.payload_bytes_sent, s.header_bytes_sent]
        for kind, s in transport.stats.by_kind.items()
    }


def build_worker(rank: int, cfg: AFDConfig, transport, num_blocks: int) -> AttentionWorker | ExpertWorker:
    """Rank < A: the model without routed experts and an empty KV cache; else one range of the experts.
    Each rank reads the checkpoint and keeps its part (a reference runtime for small models)."""
    model = load_model(cfg.model_dir, "cpu", DTYPES[cfg.dtype])
    ranges = expert_ranges(model.config.moe.num_experts, cfg.expert_workers)
    experts_at = [cfg.expert_rank(w) for w in range(cfg.expert_workers)]
    if rank < cfg.attention_workers:
        return AttentionWorker(
            drop_routed_experts(model),
            num_blocks,
            cfg.block_size,
            cfg.attention_backend,
            transport,
            experts_at,
            ranges,
        )
    return ExpertWorker(model, ranges[rank - cfg.attention_workers], transport, range(cfg.attention_workers))


def serve(
    rank: int, cfg: AFDConfig, worker, transport, requests: list[Request], num_blocks: int
) -> RankResult:
    """Rank 0 serves the requests with the Engine and stops the others; the others follow its plans."""
    supervisor.report(Stage.SERVING)
    if rank != 0:
        serve_worker(worker, transport)
        return RankResult(_sent_by_kind(transport))
    executor = AFDExecutor(
        worker,
        transport,
        cfg.attention_workers,
        [cfg.expert_rank(w) for w in range(cfg.expert_workers)],
        num_blocks,
        cfg.block_size,
        cfg.pipeline_batches,
    )
    engine = Engine(executor, sampling_params(cfg), max_batch_size=cfg.max_batch_size)
    try:
        run = engine.run(requests)
    except BaseException:
        with contextlib.suppress(Exception):  # best effort: a peer may be gone
            executor.stop()
        raise
    supervisor.report(Stage.SHUTDOWN)
    executor.stop()
    supervisor.fault_point("shutdown")
    return RankResult(_sent_by_kind(transport), run, executor.tokens)


def serve_rank(
    rank: int, world_size: int, cfg: AFDConfig, requests: list[Request], num_blocks: int
) -> RankResult:
    """Body of one spawned process (distributed.run_in_group has joined it to the group)."""
    transport = TorchDistTransport(timeout_s=RUN_TIMEOUT_S)  # collective: every rank builds its own
    supervisor.fault_point("load")
    worker = build_worker(rank, cfg, transport, num_blocks)
    result = serve(rank, cfg, worker, transport, requests, num_blocks)
    transport.close()
    return result


def _run_threads(cfg: AFDConfig, requests: list[Request], num_blocks: int) -> list[RankResult]:
    transports = InProcessTransport.create(cfg.world_size, timeout_s=RUN_TIMEOUT_S)
    workers = [build_worker(r, cfg, transports[r], num_blocks) for r in range(cfg.world_size)]
    results: list[RankResult | None] = [None] * cfg.world_size
    errors: list[str] = []

    def body(rank: int) -> None:
        try:
            results[rank] = serve(rank, cfg, workers[rank], transports[rank], requests, num_blocks)
        except BaseException:
            errors.append(f"rank {rank}: {traceback.format_exc()}")

    threads = [threading.Thread(target=body, args=(r,), daemon=True) for r in range(1, cfg.world_size)]
    for t in threads:
        t.start()
    try:
        results[0] = serve(0, cfg, workers[0], transports[0], requests, num_blocks)
    finally:
        for t in threads:
            t.join(THREAD_JOIN_S)
    if errors or any(r is None for r in results):
        raise RuntimeError("AFD worker thread failed:\n" + "\n".join(errors or ["a worker did not stop"]))
    return results


def generate_afd(cfg: AFDConfig, requests: Sequence[Request]) -> AFDRun:
    """Serves `requests` with A attention + E expert workers (processes on this machine, or threads)."""
    requests = list(requests)
    if not requests:
        raise ConfigError("no requests to serve")
    model_cfg = read_config(cfg.model_dir)
    check_model(cfg, model_cfg)
    check_vocab(requests, model_cfg.vocab_size)  # before any process starts
    num_blocks = cfg.num_blocks or blocks_for_requests(requests, cfg.block_size)
    num_experts = model_cfg.moe.num_experts
    if cfg.launcher == "threads":
        results = _run_threads(cfg, requests, num_blocks)
        header_bytes = InProcessTransport.header_bytes_per_message
    else:
        results = run_in_group(
            serve_rank,
            cfg.world_size,
            args=(cfg, requests, num_blocks),
            backend="gloo",
            timeout_s=RUN_TIMEOUT_S,
            torch_threads=max(1, (os.cpu_count() or 1) // cfg.world_size),
            heartbeat_timeout_s=cfg.heartbeat_timeout_s,
            describe_rank=partial(cfg.describe_rank, num_experts=num_experts),
        )
        header_bytes = TorchDistTransport.header_bytes_per_message
    totals: dict[str, list[int]] = {}
    for result in results:
        for kind, values in result.traffic.items():
            totals[kind] = [a + b for a, b in zip(totals.get(kind, [0, 0, 0]), values, strict=True)]
    return AFDRun(
        engine=results[0].engine,
        config=cfg,
        expert_ranges=tuple(expert_ranges(num_experts, cfg.expert_workers)),
        traffic={kind: KindTraffic(*values) for kind, values in totals.items()},
        tokens=results[0].tokens,
        moe_layers=len(moe_layers(model_cfg)),
        top_k=model_cfg.moe.top_k,
        hidden_size=model_cfg.hidden_size,
        elem_bytes=DTYPES[cfg.dtype].itemsize,
        header_bytes_per_message=header_bytes,
    )
