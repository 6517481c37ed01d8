"""Building a rank's worker: its device, its model shard or its empty KV cache."""

from __future__ import annotations

import os
import threading

import torch

from reference_impl.checkpoint import load_model
from reference_impl.converter import split_model
from reference_impl.dtypes import DTYPES
from reference_impl.lamina.attention_worker import AttentionWorker
from reference_impl.lamina.compute_worker import ComputeWorker
from reference_impl.lamina.config import LaminaConfig
from reference_impl.lamina.layout import COMPUTE, PREFILL, HeadRouting
from reference_impl.lamina.prefill_worker import PrefillWorker
from reference_impl.model import ModelConfig
from reference_impl.parallel import RowParallelLinear

_TRACE_LOCK = threading.Lock()  # torch.fx tracing patches module globals: one trace at a time per process


def device_for(cfg: LaminaConfig, rank: int) -> torch.device:
    """The device of `rank`: the CPU, or one GPU per process (by LOCAL_RANK under torchrun)."""
    if cfg.device == "cpu":
        return torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", rank))
    return torch.device("cuda", local % torch.cuda.device_count())


def bind_tp_group(model, group) -> None:
    """Points the model's row-parallel linears at the tensor-parallel group of the current epoch."""
    for module in model.modules():
        if isinstance(module, RowParallelLinear):
            module.group = group


def build_worker(
    rank: int, cfg: LaminaConfig, model_cfg: ModelConfig, num_blocks: int, tp_group, device: torch.device
) -> ComputeWorker | AttentionWorker | PrefillWorker:
    """The worker of `rank`: a compute worker loads its shard of the checkpoint and splits it around
    attention; an attention worker allocates an empty cache of `num_blocks` blocks for its heads; a
    prefill worker loads the whole checkpoint."""
    layout = cfg.layout
    routing = cfg.routing(model_cfg)
    dtype = DTYPES[cfg.dtype]
    if layout.role(rank) == PREFILL:
        model = load_model(cfg.model_dir, device, dtype)
        whole = HeadRouting(model_cfg.num_heads, model_cfg.num_kv_heads, 1, layout.attention_workers)
        return PrefillWorker(rank, layout, whole, model)
    if layout.role(rank) == COMPUTE:
        tp_rank = layout.tp_rank_of(rank)
        model = load_model(cfg.model_dir, device, dtype, tp_rank=tp_rank, tp_size=layout.tp, group=tp_group)
        with _TRACE_LOCK:
            split = split_model(model)
        return ComputeWorker(rank, layout, routing, model, split, cfg.attention_split)
    return AttentionWorker(
        rank,
        layout,
        routing,
        model_cfg.num_layers,
        model_cfg.head_dim,
        num_blocks,
        cfg.block_size,
        dtype,
        device,
        cfg.attention_backend,
        cfg.attention_split,
    )
