"""What an AFD run reports: the engine's run, and the bytes that crossed between the pools (measured).

Bytes come from the transports' counters, summed over every sender: payload bytes per message kind
(headers apart). Per token figures divide by the tokens that went through the model (prefill and
decode alike: each passes every MoE layer once).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from reference_impl.afd.config import AFDConfig
from reference_impl.engine import EngineRun, run_summary


@dataclass(frozen=True)
class KindTraffic:
    """Messages of one kind, summed over every sender (exact bytes from the transports)."""

    messages: int
    payload_bytes: int
    header_bytes: int


@dataclass(frozen=True)
class AFDRun:
    engine: EngineRun
    config: AFDConfig
    expert_ranges: tuple[tuple[int, int], ...]  # [lo, hi) of the routed experts of each expert worker
    traffic: dict[str, KindTraffic]  # message kind -> totals
    tokens: int  # tokens through the model, prefill and decode
    moe_layers: int
    top_k: int
    hidden_size: int  # d
    elem_bytes: int  # e
    header_bytes_per_message: int

    @property
    def completions(self):
        return self.engine.completions

    def payload_bytes(self, kind: str) -> int:
        return self.traffic[kind].payload_bytes if kind in self.traffic else 0

    def bytes_per_token(self, kind: str) -> float | None:
        """Payload bytes of `kind` per token, over all MoE layers (None when no token ran)."""
        return self.payload_bytes(kind) / self.tokens if self.tokens else None

    def bytes_per_token_per_moe_layer(self, kind: str) -> float | None:
        return self.payload_bytes(kind) / (self.tokens * self.moe_layers) if self.tokens else None

    @property
    def formula_bytes_per_token_per_moe_layer(self) -> int:
        """k·d·e: one copy of a token's hidden state per chosen expert (the catalog's AFD figure, each way).
        Combine moves exactly this; dispatch at most this (one copy per expert worker, not per expert)."""
        return self.top_k * self.hidden_size * self.elem_bytes

    def summary(self) -> dict:
        """JSON-ready figures: the engine's timing, then the dispatch/combine bytes (measured)."""
        out = run_summary(self.engine)
        out.update(
            system="afd",
            attention_workers=self.config.attention_workers,
            expert_workers=self.config.expert_workers,
            pipeline_batches=self.config.pipeline_batches,
            expert_ranges=[list(r) for r in self.expert_ranges],
            shared_experts_on="attention",
            tokens_through_model=self.tokens,
            moe_layers=self.moe_layers,
            formula_bytes_per_token_per_moe_layer=self.formula_bytes_per_token_per_moe_layer,
            header_bytes_per_message=self.header_bytes_per_message,
            traffic={kind: asdict(t) for kind, t in sorted(self.traffic.items())},
        )
        for kind in ("dispatch", "routing", "combine"):
            out[f"{kind}_bytes_per_token"] = self.bytes_per_token(kind)
            out[f"{kind}_bytes_per_token_per_moe_layer"] = self.bytes_per_token_per_moe_layer(kind)
        return out
