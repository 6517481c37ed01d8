"""Tensor parallelism for the dense part of a decoder (Megatron-LM style, arXiv 1909.08053 section 3).

A column-parallel linear splits its *output* features across ranks: each rank computes a slice of the
output and no communication is needed. A row-parallel linear splits its *input* features: each rank
computes a partial sum of the full output, and an all-reduce over the tensor-parallel group adds them.
Pairing column (q/k/v, gate/up, fc1) with row (o, down, fc2) costs one all-reduce per block.

Shards are contiguous chunks, so for attention projections whose rows are laid out head by head
(rows h*D .. (h+1)*D belong to head h) a column shard is a whole number of heads.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from reference_impl.errors import ConfigError


def shard_range(length: int, rank: int, size: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous chunk when `length` items are split evenly over `size` ranks."""
    if size < 1 or not 0 <= rank < size:
        raise ConfigError(f"tensor-parallel rank {rank} is not in [0, {size}); size must be >= 1")
    if length % size != 0:
        raise ConfigError(f"cannot split {length} items evenly over {size} tensor-parallel ranks")
    chunk = length // size
    return rank * chunk, (rank + 1) * chunk


def shard(tensor: torch.Tensor, dim: int, rank: int, size: int) -> torch.Tensor:
    """This rank's contiguous chunk of `tensor` along `dim` (a view; no copy)."""
    start, stop = shard_range(tensor.shape[dim], rank, size)
    return tensor.narrow(dim, start, stop - start)


def all_reduce(x: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Sum `x` over the ranks of `group` in place and return it (None: the default process group)."""
    dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
    return x


def _empty_param(shape: tuple[int, ...], device, dtype) -> nn.Parameter:
    # Uninitialised on purpose: every weight is overwritten by the checkpoint loader, and random init of
    # a multi-GB model would cost seconds to minutes for nothing.
    return nn.Parameter(torch.empty(shape, device=device, dtype=dtype), requires_grad=False)


class ColumnParallelLinear(nn.Module):
    """y_local = x @ W_local^T + b_local, W sharded along its output dim (dim 0). Output is this rank's slice."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        tp_rank: int = 0,
        tp_size: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        start, stop = shard_range(out_features, tp_rank, tp_size)
        self.in_features, self.out_features = in_features, out_features
        self.tp_rank, self.tp_size = tp_rank, tp_size
        self.weight = _empty_param((stop - start, in_features), device, dtype)  # (out/tp, in)
        self.bias = _empty_param((stop - start,), device, dtype) if bias else None
        # which dim of the *full* checkpoint tensor is split across ranks (None: replicated)
        self.shard_dims = {"weight": 0, "bias": 0}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)  # (..., in) -> (..., out/tp)

    @torch.no_grad()
    def load_full_(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> ColumnParallelLinear:
        """Copy this rank's shard of the unsharded `weight` (out, in) and `bias` (out,)."""
        self.weight.copy_(shard(weight, 0, self.tp_rank, self.tp_size))
        if self.bias is not None and bias is not None:
            self.bias.copy_(shard(bias, 0, self.tp_rank, self.tp_size))
        return self


class RowParallelLinear(nn.Module):
    """y = all_reduce(x_local @ W_local^T) + b, W sharded along its input dim (dim 1); b replicated.

    The input is this rank's slice of the features (the output of a ColumnParallelLinear); the output
    is the full (replicated) result on every rank.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        tp_rank: int = 0,
        tp_size: int = 1,
        group: dist.ProcessGroup | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        start, stop = shard_range(in_features, tp_rank, tp_size)
        self.in_features, self.out_features = in_features, out_features
        self.tp_rank, self.tp_size, self.group = tp_rank, tp_size, group
        self.weight = _empty_param((out_features, stop - start), device, dtype)  # (out, in/tp)
        self.bias = _empty_param((out_features,), device, dtype) if bias else None
        self.shard_dims = {"weight": 1, "bias": None}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.linear(x, self.weight, self.bias)  # one fused op, bit-identical to nn.Linear
        y = all_reduce(F.linear(x, self.weight), self.group)  # (..., in/tp) -> (..., out), summed
        # the bias is added once, after the sum; adding it on every rank would count it tp_size times
        return y if self.bias is None else y + self.bias

    @torch.no_grad()
    def load_full_(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> RowParallelLinear:
        """Copy this rank's shard of the unsharded `weight` (out, in) and the whole `bias` (out,)."""
        self.weight.copy_(shard(weight, 1, self.tp_rank, self.tp_size))
        if self.bias is not None and bias is not None:
            self.bias.copy_(bias)
        return self
