"""The Lamina runtime: attention offloading across processes (arXiv 2405.01814 v2).

Model-attention disaggregation: compute workers hold the weights (optionally tensor-parallel) and run
every dense operator; attention workers hold the paged KV cache of a contiguous range of KV heads and
run attention for those heads. Per layer of a decode step, q, k, v travel from the compute side to
the attention workers and the attention output comes back. Compute rank 0 also runs the scheduler
(the homogeneous baseline's Engine) and sends every other rank a step plan per step.

Reading order, one idea per module:

    config.py            LaminaConfig: the options of a run and their checks
    layout.py            which rank does what; which KV heads travel between which ranks
    plan.py              StepPlan: rank 0's control message, and its int64 encoding
    clock.py, links.py   a worker's time by category; its timed messages with failure detection
    compute_worker.py    dense slices, prefill, pipelined decode on the compute side
    attention_worker.py  the KV cache of a head range, attention (optionally split) per layer
    executor.py          rank 0: the Engine's forward passes as step plans run by every rank
    recovery.py          rank 0: replacing dead workers and redoing the step
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
