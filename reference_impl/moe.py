"""Mixture-of-experts FFN blocks: a router picks k of E SwiGLU experts per token, their outputs are summed
with the routing weights (Shazeer et al., arXiv 1701.06538; Mixtral, arXiv 2401.04088).

Three routers, one per model family, exactly as the models define them:
- Mixtral: softmax over the k largest logits. Computed as transformers does (softmax over all E, keep the
  top k, divide by their sum), which is the same number: e^l_i / sum_E / (sum_topk e^l_j / sum_E).
- Qwen3-MoE: softmax over all E, top k; with norm_topk_prob the k weights are renormalised to sum to 1.
- DeepSeek-V3 (arXiv 2412.19437 Sec. 2.1.2): sigmoid scores; experts are chosen on score + a learned bias
  (e_score_correction_bias, balancing without an auxiliary loss) within the topk_group best of n_group
  groups (a group's rank is the sum of its two best biased scores); the weights are the chosen unbiased
  scores, renormalised, times routed_scaling_factor. Shared experts see every token.

A plain loop over experts (a readable reference, no fused kernels): each expert runs on the tokens routed
to it and index_add puts its weighted output back in their rows, in expert order as transformers sums
them. No Python branch depends on tensor values, so torch.fx traces the block and the Lamina converter
keeps it inside a dense slice. Under tensor parallelism each expert's width is split like a dense MLP
(column-parallel gate/up, row-parallel down), so each expert all-reduces once: E all-reduces per layer
(simple, not fast); the router and the routing decision are replicated on every rank.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reference_impl.errors import ConfigError

SCORINGS = ("softmax", "sigmoid")


@dataclass(frozen=True)
class MoEConfig:
    num_experts: int  # E routed experts per MoE layer
    top_k: int  # k experts per token
    expert_intermediate_size: int  # each expert's SwiGLU width
    scoring: str = "softmax"  # "softmax" (Mixtral, Qwen3-MoE) | "sigmoid" (DeepSeek-V3)
    norm_topk_prob: bool = True  # renormalise the k weights to sum to 1
    round_weights: bool = False  # Qwen3-MoE rounds the weights to the activation dtype before scaling
    dense_layers: tuple[int, ...] = ()  # layers with the dense MLP (ModelConfig.intermediate_size) instead
    num_shared_experts: int = 0  # DeepSeek: one always-on SwiGLU of num_shared * expert_intermediate_size
    n_group: int = 1  # DeepSeek-V3 group-limited routing: experts come from the topk_group best groups
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    score_bias: bool = False  # DeepSeek-V3's e_score_correction_bias (selection only)

    def __post_init__(self) -> None:
        for name in ("num_experts", "top_k", "expert_intermediate_size", "n_group", "topk_group"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"MoE {name} must be an integer >= 1, got {value!r}")
        if self.scoring not in SCORINGS:
            raise ConfigError(f"unsupported MoE scoring {self.scoring!r}; supported: {', '.join(SCORINGS)}")
        if self.top_k > self.num_experts:
            raise ConfigError(f"MoE top_k {self.top_k} exceeds the {self.num_experts} experts")
        if self.num_experts % self.n_group or self.topk_group > self.n_group:
            raise ConfigError(
                f"MoE group routing needs num_experts ({self.num_experts}) divisible by n_group "
                f"({self.n_group}) and topk_group ({self.topk_group}) <= n_group"
            )
        per_group = self.num_experts // self.n_group
        if self.n_group > 1 and (per_group < 2 or self.top_k > self.topk_group * per_group):
            raise ConfigError(
                f"MoE group routing: {self.n_group} groups of {per_group} experts (need >= 2) cannot supply "
                f"top_k {self.top_k} from {self.topk_group} groups"
            )
        if self.num_shared_experts < 0 or not self.routed_scaling_factor > 0:
            raise ConfigError("MoE num_shared_experts must be >= 0 and routed_scaling_factor > 0")

    def is_sparse(self, layer: int) -> bool:
        """Whether `layer`'s FFN is routed experts (else the dense MLP)."""
        return layer not in self.dense_layers


def route_softmax(logits: torch.Tensor, top_k: int, renormalise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixtral / Qwen3-MoE routing. logits (T, E) -> weights (T, k) float32, experts (T, k) int64."""
    probs = logits.float().softmax(dim=-1)  # (T, E)
    weights, experts = torch.topk(probs, top_k, dim=-1)  # (T, k)
    if renormalise:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, experts


def route_grouped_sigmoid(
    logits: torch.Tensor, bias: torch.Tensor, cfg: MoEConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3 routing. logits (T, E) float32, bias (E,) -> weights (T, k) float32, experts (T, k)."""
    scores = logits.sigmoid()  # (T, E)
    biased = scores + bias  # (T, E): used to choose, never as a weight
    grouped = biased.view(-1, cfg.n_group, cfg.num_experts // cfg.n_group)  # (T, G, E/G)
    group_rank = grouped.topk(2, dim=-1)[0].sum(dim=-1)  # (T, G): sum of each group's two best
    groups = torch.topk(group_rank, cfg.topk_group, dim=-1, sorted=False)[1]  # (T, topk_group)
    keep = torch.zeros_like(group_rank).scatter(1, groups, 1.0)  # (T, G) 1 = group allowed
    keep = keep.unsqueeze(-1).expand_as(grouped).reshape(-1, cfg.num_experts)  # (T, E)
    experts = torch.topk(biased.masked_fill(keep == 0, float("-inf")), cfg.top_k, dim=-1, sorted=False)[1]
    weights = scores.gather(1, experts)  # (T, k) unbiased scores of the chosen experts
    if cfg.norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)  # 1e-20 as DeepSeek's code
    return weights * cfg.routed_scaling_factor, experts


class Router(nn.Module):
    """Scores every expert for every token and picks k; weight (E, d), replicated on every TP rank."""

    def __init__(self, cfg: MoEConfig, hidden: int, device, dtype) -> None:
        super().__init__()
        self.cfg = cfg
        # DeepSeek-V3 routes in float32 (weight and logits); Mixtral and Qwen3 compute logits in the model dtype
        wdtype = torch.float32 if cfg.scoring == "sigmoid" else dtype
        self.weight = nn.Parameter(torch.empty(cfg.num_experts, hidden, device=device, dtype=wdtype), False)
        self.score_bias = (
            nn.Parameter(torch.zeros(cfg.num_experts, device=device, dtype=torch.float32), False)
            if cfg.score_bias
            else None
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (T, d) -> weights (T, k), experts (T, k)."""
        if self.cfg.scoring == "softmax":
            weights, experts = route_softmax(
                F.linear(x, self.weight), self.cfg.top_k, self.cfg.norm_topk_prob
            )
        else:
            logits = F.linear(x.float(), self.weight.float())  # (T, E) float32
            bias = self.score_bias if self.score_bias is not None else torch.zeros_like(logits[0])
            weights, experts = route_grouped_sigmoid(logits, bias, self.cfg)
        return (weights.to(x.dtype) if self.cfg.round_weights else weights), experts


class Expert(nn.Module):
    """One SwiGLU FFN: down(silu(gate(x)) * up(x)); its width split over TP ranks like the dense MLP."""

    def __init__(self, hidden: int, width: int, tp: Any) -> None:
        super().__init__()
        self.w_gate = tp.column(hidden, width, False)
        self.w_up = tp.column(hidden, width, False)
        self.w_down = tp.row(width, hidden, False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))  # (n, d) -> (n, width/tp) -> (n, d)


class MoEBlock(nn.Module):
    """The FFN of a MoE layer: routed experts (+ shared experts). `tp` builds the parallel linears."""

    def __init__(self, cfg: MoEConfig, hidden: int, tp: Any) -> None:
        super().__init__()
        self.router = Router(cfg, hidden, tp.device, tp.dtype)
        self.experts = nn.ModuleList(
            Expert(hidden, cfg.expert_intermediate_size, tp) for _ in range(cfg.num_experts)
        )
        width = cfg.num_shared_experts * cfg.expert_intermediate_size
        self.shared = Expert(hidden, width, tp) if width else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, experts = self.router(x)  # (T, k), (T, k)
        out = weighted_sum(x, weights, experts, len(self.experts), lambda e, token: self.experts[e](x[token]))
        if self.shared is not None:
            out = out + self.shared(x)
        return out


def weighted_sum(
    x: torch.Tensor,
    weights: torch.Tensor,
    experts: torch.Tensor,
    num_experts: int,
    expert_output: Callable[[int, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """The routed experts' outputs summed with the routing weights: x (T, d), weights/experts (T, k) -> (T, d).

    expert_output(e, token) is expert e's output (n_e, d) for the rows x[token] routed to it (token
    ascending); MoEBlock computes it here, the AFD runtime receives it from the expert worker holding e.
    The sum runs in expert order, each weighted output cast to x's dtype, so both give the same numbers.
    """
    out = torch.zeros_like(x)  # (T, d)
    for e in range(num_experts):
        token, slot = torch.where(experts == e)  # the tokens routed to e, and which of their k slots
        y = expert_output(e, token) * weights[token, slot, None]  # (n_e, d), float32 unless weights rounded
        out = out.index_add(0, token, y.to(x.dtype))
    return out
