"""Automatic model splitting: n attention calls cut a decoder into n+1 dense slices (Lamina section 4.1).

Lamina's compute workers run everything except attention; per layer they ship q, k, v to the attention
workers and resume with the attention output. Instead of rewriting each model by hand, we trace
`DecoderModel.forward` with torch.fx (the module-level `attention` function is a leaf), cut the node list
at every attention call and let the graph say what must cross each cut: any value defined before the cut
and used after it (the residual stream, RoPE cos/sin, ...). Nothing here knows about LLaMA or OPT.

    slice 0:      (input_ids, positions)      -> (live_0..., q_0, k_0, v_0)
    slice i:      (live_{i-1}..., attn_{i-1}) -> (live_i..., q_i, k_i, v_i)      0 < i < n
    slice n:      (live_{n-1}..., attn_{n-1}) -> hidden (T, d)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn

from reference_impl.errors import ConfigError
from reference_impl.model import DecoderModel, attention
from reference_impl.parallel import ColumnParallelLinear, RowParallelLinear

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
ROLES = ("live", "q", "k", "v", "attn_out")


class _Tracer(fx.Tracer):
    """Keeps parallel linears as single call_module nodes (like nn.Linear), so their all-reduce, a
    collective fx cannot trace, stays inside the module."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, ColumnParallelLinear | RowParallelLinear) or super().is_leaf_module(m, qualname)


@dataclass(frozen=True)
class CutValue:
    """One tensor crossing a cut, at a given token count."""

    name: str  # live values: fx node name in the traced forward (e.g. "add_3", a residual stream); else role
    role: str  # "live" (stays with the dense worker), "q"/"k"/"v" (sent out), "attn_out" (received)
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class _ValueShape:
    """Shape of a value as an affine function of the token count T: dim = const + per_token * T."""

    name: str
    role: str
    const: tuple[int, ...]
    per_token: tuple[int, ...]
    is_float: bool
    itemsize: int  # of the probed tensor; used for non-float values (int64 positions)

    def at(self, num_tokens: int, dtype: torch.dtype) -> CutValue:
        shape = tuple(c + p * num_tokens for c, p in zip(self.const, self.per_token, strict=True))
        elem_bytes = dtype.itemsize if self.is_float else self.itemsize
        return CutValue(self.name, self.role, shape, elem_bytes * int(torch.Size(shape).numel()))


@dataclass
class SplitModel:
    slices: list[fx.GraphModule]  # n + 1 slices around n attention calls
    layers: list[int]  # the `layer` argument of the attention call at each cut
    live_names: list[list[str]]  # per cut: fx names of the values that stay with the dense worker
    model: DecoderModel = field(repr=False)
    _shapes: list[list[_ValueShape]] | None = field(default=None, repr=False)

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, attend: Attend) -> torch.Tensor:
        """Same result as model(input_ids, positions, ctx) with attend = ctx.attend, one slice at a time."""
        out = self.slices[0](input_ids, positions)
        for i, layer in enumerate(self.layers):
            *live, q, k, v = out
            out = self.slices[i + 1](*live, attend(q, k, v, layer))
        return out

    def cut_values(self, num_tokens: int, dtype: torch.dtype) -> list[list[CutValue]]:
        """Per cut: live values, then q, k, v, then the attention output, for a step of num_tokens tokens
        whose floating-point activations are `dtype`. The first call runs the model on 1 and 2 dummy
        tokens to learn the shapes (for a tensor-parallel model, call it on every rank together)."""
        if num_tokens < 1:
            raise ConfigError(f"num_tokens must be >= 1, got {num_tokens}")
        if self._shapes is None:
            self._shapes = self._probe_shapes()
        return [[v.at(num_tokens, dtype) for v in cut] for cut in self._shapes]

    def cut_bytes(self, num_tokens: int, dtype: torch.dtype) -> list[int]:
        """Bytes crossing each cut: live values + q + k + v + attention output (see cut_values)."""
        return [sum(v.nbytes for v in cut) for cut in self.cut_values(num_tokens, dtype)]

    @torch.no_grad()
    def _probe_shapes(self) -> list[list[_ValueShape]]:
        by_tokens = [self._crossing_tensors(t) for t in (1, 2)]
        cuts = []
        for i, (one, two) in enumerate(zip(*by_tokens, strict=True)):
            names = [*self.live_names[i], "q", "k", "v", "attn_out"]
            roles = ["live"] * len(self.live_names[i]) + ["q", "k", "v", "attn_out"]
            cuts.append([_affine(n, r, a, b) for n, r, a, b in zip(names, roles, one, two, strict=True)])
        return cuts

    def _crossing_tensors(self, num_tokens: int) -> list[list[torch.Tensor]]:
        """Run the slices on num_tokens dummy tokens; per cut the tensors (live..., q, k, v, attn_out)."""
        device = next(self.model.parameters()).device
        out = self.slices[0](
            torch.zeros(num_tokens, dtype=torch.long, device=device), torch.arange(num_tokens, device=device)
        )
        per_cut = []
        for i in range(len(self.layers)):
            *live, q, k, v = out
            attn_out = torch.zeros_like(q)  # attention returns q's shape (T, Hq, D); values do not matter
            per_cut.append([*live, q, k, v, attn_out])
            out = self.slices[i + 1](*live, attn_out)
        return per_cut


def _affine(name: str, role: str, one: torch.Tensor, two: torch.Tensor) -> _ValueShape:
    per_token = tuple(b - a for a, b in zip(one.shape, two.shape, strict=True))
    const = tuple(a - p for a, p in zip(one.shape, per_token, strict=True))
    return _ValueShape(name, role, const, per_token, one.is_floating_point(), one.element_size())


def _is_attention(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target is attention


def split_model(model: DecoderModel) -> SplitModel:
    """Trace model.forward and cut it into n+1 GraphModules around its n attention calls."""
    graph = _Tracer().trace(model)
    nodes = list(graph.nodes)
    attn = [n for n in nodes if _is_attention(n)]
    if not attn:
        raise ConfigError(f"{type(model).__name__}.forward makes no call to reference_impl.model.attention")
    ctx = _context_placeholder(attn)
    inputs = [n for n in nodes if n.op == "placeholder" and n is not ctx]
    where = _stages(nodes)  # node -> (slice it is computed in, last slice or cut that reads it)
    n = len(attn)
    live = [_live_at(i, nodes, where, ctx) for i in range(n)]
    slices = []
    for i in range(n + 1):
        ins = inputs if i == 0 else [*live[i - 1], attn[i - 1]]
        outs = [*live[i], *attn[i].args[:3]] if i < n else [_output_value(nodes)]
        body = [m for m in nodes if where[m][0] == i and m.op not in ("placeholder", "get_attr", "output")]
        body = [m for m in body if not _is_attention(m)]
        slices.append(_build_slice(model, ins, body, outs, single_output=i == n, name=f"Slice{i}"))
    layers = [int(a.args[3]) for a in attn]
    return SplitModel(slices, layers, [[v.name for v in cut] for cut in live], model)


def _context_placeholder(attn: list[fx.Node]) -> fx.Node:
    ctx = attn[0].args[4]
    for a in attn:
        if a.args[4] is not ctx or not isinstance(a.args[3], int) or a.kwargs:
            raise ConfigError(
                "every attention call must be attention(q, k, v, <int layer>, ctx) on the same ctx"
            )
    if (
        not isinstance(ctx, fx.Node)
        or ctx.op != "placeholder"
        or any(not _is_attention(u) for u in ctx.users)
    ):
        raise ConfigError("the attention context must be a forward argument used only by attention calls")
    return ctx


def _stages(nodes: list[fx.Node]) -> dict[fx.Node, tuple[int, int]]:
    """For each node: the slice that computes it, and the last point that reads it.

    Nodes between attention i-1 and attention i belong to slice i. The output of attention i is produced
    at cut i and becomes available to slice i+1. A read by attention j counts as a read at cut j (q, k, v
    leave slice j), a read by any other node as a read in that node's slice.
    """
    defined, cut = {}, 0
    for node in nodes:
        if _is_attention(node):
            defined[node] = cut + 1
            cut += 1
        else:
            defined[node] = cut
    where = {}
    for node in nodes:
        reads = [defined[u] - 1 if _is_attention(u) else defined[u] for u in node.users]
        where[node] = (defined[node], max(reads, default=-1))
    return where


def _live_at(i: int, nodes: list[fx.Node], where: dict, ctx: fx.Node) -> list[fx.Node]:
    """Values computed at or before slice i (incl. earlier attention outputs) and read after cut i.

    Attention i's own q/k/v are read *at* cut i and its output is made there, so neither is live at i.
    Parameters (get_attr) never cross: each slice reads them from the shared module itself.
    """
    return [m for m in nodes if m is not ctx and m.op != "get_attr" and where[m][0] <= i < where[m][1]]


def _output_value(nodes: list[fx.Node]) -> fx.Node:
    (out,) = [n for n in nodes if n.op == "output"]
    value = out.args[0]
    if not isinstance(value, fx.Node):
        raise ConfigError("the model's forward must return a single tensor (the hidden states)")
    return value


def _build_slice(
    root: nn.Module,
    inputs: list[fx.Node],
    body: list[fx.Node],
    outputs: list[fx.Node],
    single_output: bool,
    name: str,
) -> fx.GraphModule:
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {node: graph.placeholder(node.name) for node in inputs}

    def lookup(node: fx.Node) -> fx.Node:
        if node not in env:
            if node.op != "get_attr":
                raise AssertionError(
                    f"{name}: {node.name} is neither computed here nor passed in (split bug)"
                )
            env[node] = graph.get_attr(node.target)  # parameters are shared with `root`, not copied
        return env[node]

    for node in body:
        env[node] = graph.node_copy(node, lookup)
    results = [lookup(node) for node in outputs]
    graph.output(results[0] if single_output else tuple(results))
    graph.lint()
    return fx.GraphModule(root, graph, class_name=name)
