"""Operator profiling on the local device: the measurements the performance model is calibrated from.

Measures, with warm-up, repeats and medians (every time here is `measured`):
* the dense part of one decoder layer against batch (a forward pass whose attention core is replaced
  by a no-op, divided by the layer count: norms, projections, MLP; the embedding is amortised in);
* the model head (final norm + LM head) against batch;
* decode attention of one layer (all heads) against batch and context, through the same dispatch the
  engines use (`reference_impl.attention.decode_attention`: Triton on CUDA, torch on CPU);
* the engine's fixed per-iteration cost: a real decode step of `HomogeneousExecutor` minus the
  operators above (Python scheduling, cache bookkeeping, sampling);
* the transport between two worker processes (one-way latency and bandwidth) and the all-reduce, over
  gloo on 127.0.0.1 (CPU only: a single GPU cannot host the two NCCL ranks).
The result is a `perfmodel.Profile`, written through `perfmodel.write_profile`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lamina_bench.errors import UserInputError
from lamina_bench.perfmodel import AllReducePoint, AttentionPoint, DensePoint, Profile, TransferPoint

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LINK_SIZES_BYTES = (1_000, 16_000, 256_000, 4_000_000)
ALLREDUCE_SIZES_BYTES = (4_000, 64_000, 1_000_000)


@dataclass(frozen=True)
class ProfileSettings:
    model: str = (
        "bench-llama-gqa"  # bench model, HF folder, or catalog name (random weights, `layers` layers)
    )
    device: str = "cpu"  # cpu | cuda
    dtype: str = "fp32"
    batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    contexts: tuple[int, ...] = (64, 256, 1024)
    repeats: int = 5
    warmup: int = 2
    layers: int = 2  # decoder layers built for a catalog shape (times are per layer)
    block_size: int = 16
    link: bool = True  # measure transport + all-reduce between two local processes (CPU only)
    overhead: bool = True  # measure the engine's per-iteration overhead (needs a whole model)
    extra_versions: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise UserInputError(f"unknown profile device {self.device!r}; valid: cpu, cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UserInputError("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
        if self.dtype not in DTYPES:
            raise UserInputError(f"unknown dtype {self.dtype!r}; valid: {', '.join(DTYPES)}")
        for name in ("batches", "contexts"):
            values = getattr(self, name)
            if len(values) < 2 or any(v < 1 for v in values):
                raise UserInputError(f"profile {name} needs at least two positive values, got {values}")
        if self.repeats < 1 or self.warmup < 0 or self.layers < 1:
            raise UserInputError("profile needs repeats >= 1, warmup >= 0, layers >= 1")


def median_time_s(fn: Callable[[], object], repeats: int, warmup: int, device: str) -> float:
    """Median wall time of fn() over `repeats` calls after `warmup` calls (CUDA: synchronised)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class _NoAttention:
    """Attention context that skips the attention core (returns zeros), isolating the dense part."""

    def attend(self, q, k, v, layer):  # q (T, Hq, D) -> (T, Hq, D)
        return torch.zeros_like(q)


def _build_model(settings: ProfileSettings):
    """(model, ModelSpec of the profiled shape, checkpoint folder or None) on the settings' device."""
    from lamina_bench.benchmodels import BENCH_MODELS, checkpoint_path
    from lamina_bench.models import get_model, hf_config
    from lamina_bench.simulate import spec_from_hf_config
    from reference_impl.model import DecoderModel, ModelConfig, load_model

    dtype = DTYPES[settings.dtype]
    if settings.model in BENCH_MODELS or Path(settings.model, "config.json").is_file():
        folder = checkpoint_path(settings.model)
        config = json.loads((folder / "config.json").read_text())
        spec = spec_from_hf_config(config, name=Path(settings.model).name)
        return load_model(folder, device=settings.device, dtype=dtype), spec, folder
    try:
        spec = get_model(settings.model)
    except UserInputError:
        raise UserInputError(
            f"unknown profile model {settings.model!r}; valid: {', '.join(BENCH_MODELS)}, a folder holding "
            "config.json, or a catalog model (see `lamina-bench models`)"
        ) from None
    config = ModelConfig.from_hf({**hf_config(spec), "num_hidden_layers": settings.layers})
    torch.manual_seed(0)
    model = DecoderModel(config, device=settings.device, dtype=dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    return model.eval(), spec, None


@torch.inference_mode()
def _dense_points(model, s: ProfileSettings) -> tuple[tuple[DensePoint, ...], tuple[DensePoint, ...]]:
    layers, dense, head = model.config.num_layers, [], []
    vocab, d = model.config.vocab_size, model.config.hidden_size
    for b in s.batches:
        ids = torch.randint(0, vocab, (b,), device=s.device)
        pos = torch.full((b,), min(128, model.config.max_position - 1), device=s.device)
        t = median_time_s(
            lambda ids=ids, pos=pos: model(ids, pos, _NoAttention()), s.repeats, s.warmup, s.device
        )
        dense.append(DensePoint(b, t / layers))
        hidden = torch.randn(b, d, device=s.device, dtype=DTYPES[s.dtype])
        head.append(
            DensePoint(b, median_time_s(lambda h=hidden: model.logits(h), s.repeats, s.warmup, s.device))
        )
    return tuple(dense), tuple(head)


def _paged_inputs(model, batch: int, context: int, s: ProfileSettings):
    """Random q and a one-layer paged cache holding `batch` sequences of `context` tokens each."""
    cfg, dtype = model.config, DTYPES[s.dtype]
    blocks_per_seq = -(-context // s.block_size)
    num_blocks = batch * blocks_per_seq
    shape = (num_blocks, s.block_size, cfg.num_kv_heads, cfg.head_dim)
    k = torch.randn(shape, device=s.device, dtype=dtype)
    v = torch.randn(shape, device=s.device, dtype=dtype)
    perm = torch.randperm(num_blocks, device=s.device).to(torch.int32)  # scattered blocks, like a real cache
    tables = perm.view(batch, blocks_per_seq)
    lens = torch.full((batch,), context, dtype=torch.int32, device=s.device)
    q = torch.randn(batch, cfg.num_heads, cfg.head_dim, device=s.device, dtype=dtype)
    return q, k, v, tables, lens


@torch.inference_mode()
def _attention_points(model, s: ProfileSettings) -> tuple[AttentionPoint, ...]:
    from reference_impl.attention import decode_attention

    scale = model.config.head_dim**-0.5
    points = []
    for b in s.batches:
        for c in s.contexts:
            inputs = _paged_inputs(model, b, c, s)
            t = median_time_s(lambda x=inputs: decode_attention(*x, scale), s.repeats, s.warmup, s.device)
            points.append(AttentionPoint(b, c, t))
    return tuple(points)


def _iteration_overhead_s(model, s: ProfileSettings, dense, head, attention) -> float:
    """Median over a few (batch, context) of: measured engine decode step - sum of its operators."""
    import numpy as np

    from lamina_bench.perfmodel import _interp_extrap  # the same interpolation the model uses
    from reference_impl.engine import HomogeneousExecutor

    layers = model.config.num_layers
    residuals = []
    for b in (s.batches[0], s.batches[len(s.batches) // 2], s.batches[-1]):
        c = s.contexts[0]
        ex = HomogeneousExecutor(model, num_blocks=b * (-(-(c + s.warmup + s.repeats + 1) // s.block_size)),
                                 block_size=s.block_size)  # fmt: skip
        seqs = list(range(b))
        for i in seqs:
            ex.reserve(i, c + s.warmup + s.repeats + 1)
        ex.forward(seqs, [[1] * c for _ in seqs])  # prefill
        # what the engine does per decode iteration: forward, greedy sampling, ids back to Python
        step = median_time_s(
            lambda seqs=seqs, ex=ex: ex.forward(seqs, [[1]] * len(seqs)).argmax(-1).tolist(),
            s.repeats,
            s.warmup,
            s.device,
        )
        d = float(_interp_extrap(b, np.array([p.batch for p in dense]), np.array([p.time_s for p in dense])))
        h = float(_interp_extrap(b, np.array([p.batch for p in head]), np.array([p.time_s for p in head])))
        att = [p for p in attention if p.context_len == c]
        a = float(_interp_extrap(b, np.array([p.batch for p in att]), np.array([p.time_s for p in att])))
        residuals.append(step - layers * (d + a) - h)
    return max(0.0, statistics.median(residuals))


def _link_worker(rank: int, world_size: int, sizes: tuple[int, ...], repeats: int):
    import torch.distributed as dist

    from reference_impl.transport import TorchDistTransport, measure_link

    transport = TorchDistTransport()
    try:
        link = measure_link(transport, 1 - rank, sizes, repeats=repeats)
    finally:
        transport.close()
    allreduce = []
    for size in ALLREDUCE_SIZES_BYTES:
        x = torch.zeros(size // 4, dtype=torch.float32)
        allreduce.append((size, median_time_s(lambda x=x: dist.all_reduce(x), repeats, 2, "cpu")))
    return [(p.size_bytes, p.one_way_s) for p in link.points], allreduce


def _link_points(s: ProfileSettings) -> tuple[tuple[TransferPoint, ...], tuple[AllReducePoint, ...]]:
    from reference_impl.distributed import run_in_group

    link, allreduce = run_in_group(_link_worker, 2, args=(LINK_SIZES_BYTES, s.repeats))[0]
    return (
        tuple(TransferPoint(n, t) for n, t in link),
        tuple(AllReducePoint(n, 2, t) for n, t in allreduce),
    )


def local_device_name(device: str) -> str:
    """The profile's device key: "cpu", or the catalog name of the local GPU (its torch name otherwise)."""
    if device == "cpu":
        return "cpu"
    from lamina_bench.hardware import match_cuda_name

    name = torch.cuda.get_device_name(0)
    return match_cuda_name(name) or name.replace(" ", "-")


def profile_device(settings: ProfileSettings, progress: Callable[[str], None] = lambda _msg: None) -> Profile:
    """Profile the local device (see the module doc). Every time in the result is measured here."""
    model, spec, folder = _build_model(settings)
    progress(f"dense part: {len(settings.batches)} batch sizes")
    dense, head = _dense_points(model, settings)
    progress(f"decode attention: {len(settings.batches) * len(settings.contexts)} (batch, context) points")
    attention = _attention_points(model, settings)
    overhead = 0.0
    if settings.overhead and folder is not None:
        progress("engine decode steps (per-iteration overhead)")
        overhead = _iteration_overhead_s(model, settings, dense, head, attention)
    link, allreduce = (), ()
    if settings.link and settings.device == "cpu":
        progress("transport and all-reduce between two local processes (gloo)")
        link, allreduce = _link_points(settings)
    versions = {"torch": torch.__version__, "python": platform.python_version(), **settings.extra_versions}
    try:
        import triton

        versions["triton"] = triton.__version__
    except ImportError:
        pass
    if settings.device == "cuda":
        versions["cuda"] = str(torch.version.cuda)
    return Profile(
        device=local_device_name(settings.device),
        backend=settings.device,
        date=dt.date.today().isoformat(),
        versions=versions,
        dtype=settings.dtype,
        tp=1,
        model=spec,
        dense=dense,
        attention=attention,
        head=head,
        link=link,
        allreduce=allreduce,
        iteration_overhead_s=overhead if math.isfinite(overhead) else 0.0,
    )
