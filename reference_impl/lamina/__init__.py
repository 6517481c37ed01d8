"""The Lamina runtime: attention offloading across processes (arXiv 2405.01814 v2).

Model-attention disaggregation: compute workers hold the weights (optionally tensor-parallel) and run
every dense operator; attention workers hold the paged KV cache of a contiguous range of KV heads and
run attention for those heads. Per layer of a decode step, q, k, v travel from the compute side to
the attention workers and the attention output comes back. Compute rank 0 also runs the scheduler
(the homogeneous baseline's Engine) and sends every other rank a step plan per step. Optional prefill
workers hold the whole dense model and prefill prompts while the compute workers decode; each layer's
prompt KV goes to the attention workers as it is produced.

Reading order, one idea per module:

    config.py            LaminaConfig: the options of a run and their checks
    layout.py            which rank does what; which KV heads travel between which ranks
    plan.py              StepPlan: rank 0's control message, and its int64 encoding
    clock.py, links.py   a worker's time by category; its timed messages with failure detection
    compute_worker.py    dense slices, prefill, pipelined decode on the compute side
    attention_worker.py  the KV cache of a head range, attention (optionally split) per layer
    prefill_worker.py    prefill jobs: the prompts' forward pass, KV to the attention workers by layer
    prompt_kv.py         an attention worker's intake of that KV, in the gaps between steps
    executor.py          rank 0: the Engine's forward passes as step plans run by every rank
    recovery.py          rank 0: replacing dead workers and redoing the step
    prefill_pool.py      rank 0: which prefill worker runs which prompts; their results
    disaggregated.py     rank 0's engine with prefill workers: decode goes on while prompts prefill
    fabric.py            process groups per epoch (processes) or in-process queues (threads)
    build.py, serve.py   building a rank's worker; the serve loops of rank 0 and the others
    launch.py            generate_lamina: the processes (supervised) and threads launchers
    results.py           LaminaRun: per-worker times, link traffic, recoveries
    __main__.py          the command line (spawning launcher, or one rank under torchrun)
"""

from reference_impl.lamina.config import LaminaConfig, check_model
from reference_impl.lamina.launch import generate_lamina
from reference_impl.lamina.layout import Layout
from reference_impl.lamina.results import LaminaRun, LinkTraffic, ModelShape, RecoveryEvent, WorkerTimes

__all__ = [
    "LaminaConfig",
    "LaminaRun",
    "Layout",
    "LinkTraffic",
    "ModelShape",
    "RecoveryEvent",
    "WorkerTimes",
    "check_model",
    "generate_lamina",
]
