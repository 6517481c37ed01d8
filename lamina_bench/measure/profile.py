"""Operator profiling on the local device: the measurements the performance model is calibrated from.

Measures, with warm-up, repeats and medians (every time here is `measured`):
* the dense part of one decoder layer against batch (a forward pass whose attention core is replaced
  by a no-op, divided by the layer count: norms, projections, MLP; the embedding is amortised in);
* the model head (final norm + LM head) against batch;
* decode attention of one layer (all heads) against batch and context, through the same dispatch the
  engines use (`reference_impl.attention.decode_attention`: Triton on CUDA, torch on CPU);
* whole decode steps of the homogeneous engine (`HomogeneousExecutor`) and of the Lamina runtime (one
  compute + one attention process), from which the model fits what the operators above do not explain
  (Python scheduling, cache bookkeeping, KV writes, sampling, message handling);
* the transport between two worker processes (one-way latency and bandwidth) and the all-reduce, over
  gloo on 127.0.0.1 (CPU only: a single GPU cannot host the two NCCL ranks).
The result is a `model.profiles.Profile`, written through `model.profiles.write_profile`.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import importlib.util
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from lamina_bench.catalog.benchmodels import (
    BENCH_MODELS,
    checkpoint_path,
    local_model_config,
    local_model_spec,
)
from lamina_bench.catalog.local import match_cuda_name
from lamina_bench.catalog.models import get_model, hf_config, spec_from_hf_config
from lamina_bench.catalog.moe import require_dense
from lamina_bench.errors import UserInputError
from lamina_bench.measure.run import fixed_batch_requests
from lamina_bench.model.profiles import (
    AllReducePoint,
    AttentionPoint,
    DensePoint,
    Profile,
    StepPoint,
    TransferPoint,
)
from reference_impl.attention import decode_attention
from reference_impl.attention.inputs import random_paged_inputs
from reference_impl.checkpoint import config_from_hf, load_model
from reference_impl.distributed import run_in_group
from reference_impl.dtypes import DTYPES
from reference_impl.engine import Engine
from reference_impl.homogeneous import HomogeneousExecutor
from reference_impl.kv_accounting import blocks_for_requests
from reference_impl.kv_cache import DEFAULT_BLOCK_SIZE
from reference_impl.lamina import LaminaConfig, generate_lamina
from reference_impl.model import DecoderModel
from reference_impl.transport import TorchDistTransport, measure_link

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
    repeats: int = 9
    warmup: int = 3
    layers: int = 2  # decoder layers built for a catalog shape (times are per layer)
    block_size: int = DEFAULT_BLOCK_SIZE
    link: bool = True  # measure transport + all-reduce between two local processes (CPU only)
    lamina: bool = True  # measure decode steps of the Lamina runtime (1 compute + 1 attention process)
    overhead: bool = True  # measure whole decode steps of the homogeneous engine (needs a whole model)
    cpu_threads: int | None = 1  # torch threads while profiling (a CPU "device" is one core); None: as is
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
    """Median seconds of fn() over `repeats` calls after `warmup` calls. CPU: perf_counter around each
    call. CUDA: events around each call and one synchronize at the end, so launches queue back to back
    and host overhead does not count as device time."""
    for _ in range(warmup):
        fn()
    if device != "cuda":
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    torch.cuda.synchronize()
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)
    ]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events) / 1e3  # ms -> s


class _NoAttention:
    """Attention context that skips the attention core (returns zeros), isolating the dense part."""

    def attend(self, q, k, v, layer):  # q (T, Hq, D) -> (T, Hq, D)
        return torch.zeros_like(q)


def _build_model(settings: ProfileSettings):
    """(model, ModelSpec of the profiled shape, checkpoint folder or None) on the settings' device."""
    dtype = DTYPES[settings.dtype]
    if settings.model in BENCH_MODELS or Path(settings.model, "config.json").is_file():
        folder = checkpoint_path(settings.model)  # a folder's config.json is checked here
        spec = spec_from_hf_config(local_model_config(folder), name=Path(settings.model).name)
        require_dense(spec, "profiles")  # before minutes of measuring
        return load_model(folder, device=settings.device, dtype=dtype), spec, folder
    try:
        spec = get_model(settings.model)
    except UserInputError:
        raise UserInputError(
            f"unknown profile model {settings.model!r}; valid: {', '.join(BENCH_MODELS)}, a folder holding "
            "config.json, or a catalog model (see `lamina-bench models`)"
        ) from None
    config = config_from_hf({**hf_config(spec), "num_hidden_layers": settings.layers})
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
    cfg = model.config
    return random_paged_inputs(
        [context] * batch,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        s.block_size,
        DTYPES[s.dtype],
        s.device,
    )


@torch.inference_mode()
def _attention_points(model, s: ProfileSettings) -> tuple[AttentionPoint, ...]:
    scale = model.config.head_dim**-0.5
    points = []
    for b in s.batches:
        for c in s.contexts:
            inputs = _paged_inputs(model, b, c, s)
            t = median_time_s(lambda x=inputs: decode_attention(*x, scale), s.repeats, s.warmup, s.device)
            points.append(AttentionPoint(b, c, t))
    return tuple(points)


# Whole decode steps are timed at (batch, context) pairs that the default and quick sweeps do not measure
# (they use contexts 128 and 64), so the model's error on those sweeps is not an in-sample fit.
STEP_CONTEXT = 48
ENGINE_STEP_BATCHES = (2, 8, 32)
LAMINA_STEP_BATCHES = (2, 8)
STEP_NEW_TOKENS = 12
STEP_WARMUP = 3  # decode steps dropped from each timed run


def _engine_steps(model, s: ProfileSettings) -> tuple[StepPoint, ...]:
    """Median decode step of the homogeneous engine serving a fixed batch (the measured points' method:
    Engine + HomogeneousExecutor, greedy); the model fits what its operators do not explain."""
    points = []
    for b in ENGINE_STEP_BATCHES:
        requests = fixed_batch_requests(b, STEP_CONTEXT, STEP_NEW_TOKENS, model.config.vocab_size, seed=2)
        for _ in range(2):  # the first run warms the process up (allocator, lazy init); keep the second
            ex = HomogeneousExecutor(model, blocks_for_requests(requests, s.block_size), s.block_size)
            run = Engine(ex).run(requests)
        steps = [it.decode_s for it in run.iterations if it.decode_seqs == b][STEP_WARMUP:]
        points.append(StepPoint(b, STEP_CONTEXT + STEP_NEW_TOKENS // 2, statistics.median(steps)))
    return tuple(points)


def _link_worker(rank: int, world_size: int, sizes: tuple[int, ...], repeats: int):
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
    link, allreduce = run_in_group(_link_worker, 2, args=(LINK_SIZES_BYTES, s.repeats))[0]
    return (
        tuple(TransferPoint(n, t) for n, t in link),
        tuple(AllReducePoint(n, 2, t) for n, t in allreduce),
    )


def _lamina_steps(folder, s: ProfileSettings) -> tuple[StepPoint, ...]:
    """Median decode step of the real Lamina runtime (1 compute + 1 attention process, no pipelining)."""
    vocab = local_model_spec(folder).vocab_size
    points = []
    for b in LAMINA_STEP_BATCHES:
        requests = fixed_batch_requests(b, STEP_CONTEXT, STEP_NEW_TOKENS, vocab, seed=1)
        run = generate_lamina(LaminaConfig(model_dir=str(folder), dtype=s.dtype, ignore_eos=True), requests)
        steps = [it.decode_s for it in run.engine.iterations if it.decode_seqs == b][STEP_WARMUP:]
        points.append(StepPoint(b, STEP_CONTEXT + STEP_NEW_TOKENS // 2, statistics.median(steps)))
    return tuple(points)


def local_device_name(device: str) -> str:
    """The profile's device key: "cpu", or the catalog name of the local GPU (its torch name otherwise)."""
    if device == "cpu":
        return "cpu"
    name = torch.cuda.get_device_name(0)  # a file name part (<device>-<backend>.json): no separators
    return match_cuda_name(name) or re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "cuda"


def profile_device(settings: ProfileSettings, progress: Callable[[str], None] = lambda _msg: None) -> Profile:
    """Profile the local device (see the module doc). Every time in the result is measured here."""
    before = torch.get_num_threads()
    if settings.cpu_threads is not None:
        torch.set_num_threads(settings.cpu_threads)
    try:
        return _profile(settings, progress)
    finally:
        torch.set_num_threads(before)


def _profile(settings: ProfileSettings, progress: Callable[[str], None]) -> Profile:
    model, spec, folder = _build_model(settings)
    engine_steps = ()
    if settings.overhead and folder is not None:  # first, on the freshly loaded model, like a measured run
        progress("homogeneous engine decode steps")
        engine_steps = _engine_steps(model, settings)
    progress(f"dense part: {len(settings.batches)} batch sizes")
    dense, head = _dense_points(model, settings)
    progress(f"decode attention: {len(settings.batches) * len(settings.contexts)} (batch, context) points")
    attention = _attention_points(model, settings)
    link, allreduce, lamina_steps = (), (), ()
    if settings.link and settings.device == "cpu":
        progress("transport and all-reduce between two local processes (gloo)")
        link, allreduce = _link_points(settings)
    if settings.lamina and settings.device == "cpu" and folder is not None:
        progress("Lamina runtime decode steps (1 compute + 1 attention process)")
        lamina_steps = _lamina_steps(folder, settings)
    versions = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "torch_threads": str(torch.get_num_threads()),
        **settings.extra_versions,
    }
    if importlib.util.find_spec("triton") is not None:
        versions["triton"] = importlib.metadata.version("triton")
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
        engine_steps=engine_steps,
        lamina_steps=lamina_steps,
    )
