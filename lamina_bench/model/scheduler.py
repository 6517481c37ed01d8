"""Serving schedulers by name: which requests run in each iteration and how much KV memory they may use.

reserve-all  (the default for `simulate`, `search` and sweeps; the paper's decode-only setting, the
             reference engines' default; they implement `vllm` too, reference_impl/scheduling.py): FIFO admission only when the KV cache can reserve prompt +
             all output tokens, so nothing is ever preempted; prefill time is excluded; the KV budget is
             device memory minus a 10% workspace reserve minus the weights (`model/replay.py`).
vllm         vLLM V1's scheduler (vllm/v1/core/sched/scheduler.py): KV in blocks of `block_size` tokens
             allocated as tokens are written; a waiting request is admitted when the blocks of its prompt
             (or of the prompt chunk that fits the step's token budget) are free; running requests grow
             by a block every `block_size` tokens; when a decode step needs a block that is not free, the
             most recently admitted running request is preempted by recompute (its blocks are freed, it
             goes back to the front of the queue and later re-prefills prompt + generated tokens); at most
             `max_num_seqs` requests run and at most `max_num_batched_tokens` tokens are computed per
             iteration. Prefill is simulated (model/prefill.py) in one of two ways:
               chunked   V1's default and only mode: prefill chunks share the iteration with the decodes,
                         decodes first, then the partial prefill, then new requests, within the token budget;
               separate  an iteration that has prefill work runs prefill only and the decodes wait (vLLM V0
                         without chunked prefill; SGLang's default scheduler, whose prefill batches are
                         capped by `chunked_prefill_size`).
             or on a prefill pool of its own (`prefill_pool`, NxDEVICE; model/prefill_pool.py: Splitwise /
             DistServe style, the Lamina paper's section 5): prompts are prefilled there and their KV sent
             to the decode side, which admits a request when its KV has arrived and the blocks of its
             prompt are free, and computes no prompt; only the recompute of a preempted request runs on
             the decode devices, as a chunked prefill (as vLLM's decode instance of a disaggregated
             deployment recomputes locally).
             Its KV budget is vLLM's (memory.vllm_pool_memory): memory x gpu_memory_utilization - weights
             - activation peak - non-torch memory. Each iteration also pays a CPU overhead (below).

The default stays reserve-all: it reproduces the paper's decode-only comparison and the committed
baselines; `vllm` is chosen by name (`simulate --scheduler vllm`, `scheduler = "vllm"` in a [[modeled]]
sweep block).
"""

from __future__ import annotations

from dataclasses import dataclass

from lamina_bench.catalog.devices import DeviceMix
from lamina_bench.errors import UserInputError

SCHEDULERS = ("reserve-all", "vllm")
PREFILL_MODES = ("chunked", "separate")

# ---- vLLM defaults (spec: vLLM's source) ---------------------------------------------------------------
# Block size: vllm/config/cache.py, CacheConfig.block_size default 16 on CUDA (2025).
VLLM_BLOCK_SIZE = 16
# gpu_memory_utilization: vllm/config/cache.py default 0.9 (2025).
VLLM_GPU_MEMORY_UTILIZATION = 0.9
# max_num_seqs 256 and max_num_batched_tokens 8192: vllm/engine/arg_utils.py EngineArgs.get_batch_defaults
# (2025): the OpenAI API server gets 8192 tokens and 1024 sequences on GPUs with >= 70 GiB that are not
# A100 (H100, H200, MI300X), 2048 tokens and 256 sequences elsewhere; 256 is also the V0 default. The
# simulator takes 256 sequences (the smaller cap, kept for every device) and 8192 tokens (the paper's H100
# setting); both are options.
VLLM_MAX_NUM_SEQS = 256
VLLM_MAX_NUM_BATCHED_TOKENS = 8192

# ---- per-iteration CPU overhead of the synchronous V1 engine loop (tag: assumed, with sources) ----------
# Between two forward passes the engine schedules, prepares inputs and processes the sampled tokens; with
# CUDA graphs the GPU idles meanwhile. Measurements:
#   vllm-project/vllm PR #11133 (2024-12-12): V1, Llama-2-7B, batch 256: the gap between two decode
#     steps was 5-6 ms (GIL contention of that early V1) and 150-170 us once scheduling overlapped the
#     forward pass; the 0.16 ms that remains even then is taken as the fixed part.
#   vllm-project/vllm PR #46112 (2026-06-18): V1 Scheduler.update_from_output() takes 0.142 ms at batch
#     128 and 0.287 ms at batch 256 (decode-only micro-benchmark), about 1.1 us per request; schedule() is
#     assumed to cost the same per request, so 2.2 us per scheduled request.
# Older numbers (V0, 2024: 4-20 ms per step, vllm issues #6854 and #6801) describe the engine V1 replaced.
CPU_OVERHEAD_S = 0.16e-3
CPU_OVERHEAD_PER_REQUEST_S = 2.2e-6


@dataclass(frozen=True)
class Scheduler:
    """A scheduling policy and its knobs (the vLLM ones are ignored by reserve-all)."""

    name: str = "reserve-all"
    block_size: int = VLLM_BLOCK_SIZE
    gpu_memory_utilization: float = VLLM_GPU_MEMORY_UTILIZATION
    max_num_seqs: int = VLLM_MAX_NUM_SEQS
    max_num_batched_tokens: int = VLLM_MAX_NUM_BATCHED_TOKENS
    prefill: str = "chunked"
    cpu_overhead_s: float = CPU_OVERHEAD_S
    cpu_overhead_per_request_s: float = CPU_OVERHEAD_PER_REQUEST_S
    prefill_pool: DeviceMix | None = None  # prompts prefilled on their own devices (module doc)

    def __post_init__(self) -> None:
        if self.name not in SCHEDULERS:
            raise UserInputError(f"unknown scheduler {self.name!r}; valid: {', '.join(SCHEDULERS)}")
        for knob in ("block_size", "max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, knob)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserInputError(f"{knob} must be an integer >= 1, got {value!r}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise UserInputError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization!r}"
            )
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise UserInputError(  # vLLM's SchedulerConfig rejects it too: a step must fit every decode
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs "
                f"({self.max_num_seqs})"
            )
        if self.prefill not in PREFILL_MODES:
            raise UserInputError(f"unknown prefill mode {self.prefill!r}; valid: {', '.join(PREFILL_MODES)}")
        if self.cpu_overhead_s < 0 or self.cpu_overhead_per_request_s < 0:
            raise UserInputError("CPU overheads must be >= 0 s")
        if self.prefill_pool is not None and self.prefill != "chunked":
            raise UserInputError(
                "with a prefill pool the decode devices only recompute preempted requests, as chunked "
                f"prefill; drop --prefill {self.prefill}"
            )

    @property
    def paged(self) -> bool:
        """True for the vLLM policy (paged blocks, preemption, prefill simulated)."""
        return self.name == "vllm"

    def cpu_overhead(self, requests):
        """CPU seconds of one iteration that schedules `requests` requests (decodes + prefill chunks)."""
        return self.cpu_overhead_s + self.cpu_overhead_per_request_s * requests

    def label(self) -> str:
        if not self.paged:
            return self.name
        prefill = (
            f"{self.prefill} prefill" if self.prefill_pool is None else f"prefill pool {self.prefill_pool}"
        )
        return (
            f"vllm (block {self.block_size}, gpu util {self.gpu_memory_utilization:g}, max_num_seqs "
            f"{self.max_num_seqs}, max_num_batched_tokens {self.max_num_batched_tokens}, {prefill})"
        )


RESERVE_ALL = Scheduler()


def scheduler_named(name: str, **knobs) -> Scheduler:
    """The scheduler `name` with the given knobs; vLLM knobs given to reserve-all are an error."""
    if name not in SCHEDULERS:
        raise UserInputError(f"unknown scheduler {name!r}; valid: {', '.join(SCHEDULERS)}")
    if name == "reserve-all" and knobs:
        given = ", ".join(k.replace("_", "-") for k in sorted(knobs))
        raise UserInputError(
            f"{given} apply to --scheduler vllm only (reserve-all has no blocks, caps or prefill)"
        )
    return Scheduler(name, **knobs)
