"""The homogeneous baseline: the whole model and its paged KV cache on one device, or one TP group.

`generate` serves requests in this process for tp 1; with tp N it spawns N processes joined by
torch.distributed (gloo on CPU, NCCL on CUDA) on 127.0.0.1, each running the same engine loop on its
shard. `lamina-bench generate` and `python -m reference_impl.launch` call `generate`.

Faults (tp N): a tensor-parallel rank cannot be replaced (its peers' collectives fail), so a rank that
dies, or is silent for cfg.heartbeat_timeout_s, ends the run with a one-line WorkerFailure naming the
rank and its stage (start-up, prefill or decode step N, shutdown); every process is killed and reaped
first (supervisor.py, distributed.run_in_group).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from reference_impl import supervisor
from reference_impl.attention import PagedAttention
from reference_impl.checkpoint import load_model
from reference_impl.config import GenerateConfig
from reference_impl.distributed import run_in_group
from reference_impl.dtypes import DTYPES
from reference_impl.engine import Engine, EngineRun, Request
from reference_impl.errors import ConfigError
from reference_impl.kv_accounting import KVAccounting, blocks_for_requests
from reference_impl.kv_cache import DEFAULT_BLOCK_SIZE, PagedKVCache
from reference_impl.prompts import check_vocab, sampling_params
from reference_impl.supervisor import Stage

TP_TIMEOUT_S = 3600.0  # a whole generation must finish within this (also the collectives' timeout)


class HomogeneousExecutor(KVAccounting):
    """engine.Executor that runs the whole model (one TP shard of it) over its own paged KV cache.

    Under tensor parallelism every rank runs the same engine loop on its shard (same scheduling, same
    cache layout with its local KV heads); `agree` broadcasts rank 0's sampled ids so the ranks never
    diverge, even when sampling with a temperature.
    """

    def __init__(
        self, model, num_blocks: int, block_size: int = DEFAULT_BLOCK_SIZE, backend: str = "auto", group=None
    ):
        cfg = model.config
        param = next(model.parameters())
        super().__init__(
            PagedKVCache(
                num_layers=cfg.num_layers,
                num_kv_heads=cfg.num_kv_heads // model.tp_size,
                head_dim=cfg.head_dim,
                num_blocks=num_blocks,
                block_size=block_size,
                dtype=param.dtype,
                device=param.device,
            )
        )
        self.model = model
        self.backend = backend
        self.group = group
        self.max_position = cfg.max_position
        self._steps = {Stage.PREFILL: 0, Stage.DECODE: 0}  # forwards begun, per kind (the stage's index)

    @torch.inference_mode()
    def forward(self, seq_ids: list[int], tokens: list[list[int]]) -> torch.Tensor:
        device = self.cache.k.device
        query_lens = [len(t) for t in tokens]
        self._begin_step(seq_ids, query_lens)
        meta = self.cache.prepare(seq_ids, query_lens)
        ids = [t for chunk in tokens for t in chunk]
        input_ids = torch.tensor(ids, dtype=torch.long, device=device)  # (T,)
        spans = zip(query_lens, meta.context_lens, strict=True)
        positions = torch.cat([torch.arange(c - q, c, dtype=torch.long) for q, c in spans]).to(device)  # (T,)
        ctx = PagedAttention(self.cache, meta, backend=self.backend)
        hidden = self.model(input_ids, positions, ctx)  # (T, d)
        last = torch.tensor(query_lens, device=device).cumsum(0) - 1  # (B,) each sequence's last token
        return self.model.logits(hidden[last])  # (B, V) fp32

    def _begin_step(self, seq_ids: list[int], query_lens: list[int]) -> None:
        """Publishes the step to the supervisor (tp > 1) and fires an injected test fault, if any."""
        decode = all(q == 1 for q in query_lens) and all(self.cache.length(s) > 0 for s in seq_ids)
        stage = Stage.DECODE if decode else Stage.PREFILL
        index = self._steps[stage]
        self._steps[stage] += 1
        supervisor.report(stage, index)
        supervisor.fault_point(stage.name.lower(), index)

    def agree(self, token_ids: torch.Tensor) -> torch.Tensor:
        if self.group is None or self.model.tp_size == 1:
            return token_ids
        token_ids = token_ids.to(self.cache.k.device).contiguous()
        dist.broadcast(token_ids, src=dist.get_global_rank(self.group, 0), group=self.group)
        return token_ids


def serve_homogeneous(
    cfg: GenerateConfig, requests: list[Request], tp_rank: int = 0, group=None, device: str | None = None
) -> EngineRun:
    """Loads this rank's shard and serves every request; every rank of a TP group calls this."""
    supervisor.fault_point("load")
    model = load_model(
        cfg.model_dir,
        device=device or cfg.device,
        dtype=DTYPES[cfg.dtype],
        tp_rank=tp_rank,
        tp_size=cfg.tp,
        group=group,
    )
    check_vocab(requests, model.config.vocab_size)
    num_blocks = cfg.num_blocks or blocks_for_requests(requests, cfg.block_size)
    executor = HomogeneousExecutor(
        model, num_blocks=num_blocks, block_size=cfg.block_size, backend=cfg.attention_backend, group=group
    )
    supervisor.report(Stage.SERVING)
    engine = Engine(
        executor, sampling_params(cfg), max_batch_size=cfg.max_batch_size, scheduler=cfg.scheduler_config
    )
    run = engine.run(requests)
    supervisor.report(Stage.SHUTDOWN)
    supervisor.fault_point("shutdown")
    return run


def generate(cfg: GenerateConfig, requests: list[Request]) -> EngineRun:
    """Serves `requests` with the configured system; spawns TP processes when cfg.tp > 1."""
    if cfg.tp == 1:
        return serve_homogeneous(cfg, requests)
    return _spawn_tp(cfg, requests)


# ---- tensor parallelism over local processes -------------------------------------------------------


def _tp_rank(rank: int, world_size: int, cfg: GenerateConfig, requests: list[Request]):
    """Body of one tensor-parallel process (run by distributed.run_in_group)."""
    device = "cpu"
    if cfg.device == "cuda":
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    try:
        run = serve_homogeneous(cfg, requests, tp_rank=rank, group=dist.group.WORLD, device=device)
    except ConfigError as exc:  # every rank hits the same bad input; report it as one line
        return ("config", str(exc))
    return ("ok", run if rank == 0 else None)


def _spawn_tp(cfg: GenerateConfig, requests: list[Request]) -> EngineRun:
    results = run_in_group(
        _tp_rank,
        cfg.tp,
        args=(cfg, requests),
        backend="nccl" if cfg.device == "cuda" else "gloo",
        timeout_s=TP_TIMEOUT_S,
        torch_threads=max(1, (os.cpu_count() or 1) // cfg.tp),
        heartbeat_timeout_s=cfg.heartbeat_timeout_s,
        describe_rank=lambda rank: f"tensor-parallel rank {rank} of {cfg.tp}",
    )
    for status, payload in results:
        if status == "config":
            raise ConfigError(payload)
    return results[0][1]
