"""Attention-FFN disaggregation (AFD) for mixture-of-experts models, over processes on one machine.

Attention workers (data parallel) run embeddings, norms, attention over their own KV cache, the
routers, the shared experts and the dense layers; expert workers (expert parallel) hold the routed
experts. Per MoE layer each attention worker sends every token's hidden state to the expert workers
holding its chosen experts (dispatch, M2N) and sums the returned outputs with the routing weights
(combine, N2M), as in MegaScale-Infer (arXiv 2504.02263); optionally two micro-batches ping-pong
between the pools.

Reading order, one idea per module:

    config.py          AFDConfig: the options of a run, the rank layout, the expert partition, the checks
    plan.py            StepPlan: rank 0's control message per step
    wire.py            dispatch / routing / combine messages, and the expert side's computation
    attention_side.py  the model without routed experts, its KV cache, micro-batches as coroutines
    expert_side.py     a range of experts of every MoE layer
    executor.py        rank 0: the Engine's forwards as plans; the serve loop of the other ranks
    launch.py          generate_afd: supervised processes (gloo) or threads
    results.py         AFDRun: the engine's run and the bytes dispatched and combined per token
"""

from reference_impl.afd.config import AFDConfig, check_model, expert_ranges
from reference_impl.afd.launch import generate_afd
from reference_impl.afd.results import AFDRun

__all__ = ["AFDConfig", "AFDRun", "check_model", "expert_ranges", "generate_afd"]
