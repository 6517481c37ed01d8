"""The serve loops: rank 0 serves the requests with the Engine; every other rank runs rank 0's plans.

Each worker loop receives a StepPlan ("ctrl"), executes it, reports its status (compute workers) and
closes the step on its clock, until STOP; then it sends rank 0 its times and traffic ("stats"). An
attention worker with prompt KV still arriving from prefill workers writes it into its cache while it
waits for the next plan (prompt_kv.py). With prefill workers rank 0 runs the DisaggregatedEngine.
"""

from __future__ import annotations

import torch

from reference_impl import supervisor
from reference_impl.engine import Request
from reference_impl.errors import WorkerFailure
from reference_impl.lamina.attention_worker import AttentionWorker
from reference_impl.lamina.build import bind_tp_group
from reference_impl.lamina.clock import WorkerClock
from reference_impl.lamina.compute_worker import ComputeWorker
from reference_impl.lamina.config import LaminaConfig
from reference_impl.lamina.disaggregated import DisaggregatedEngine
from reference_impl.lamina.executor import LaminaEngine, LaminaExecutor
from reference_impl.lamina.links import status_tensor
from reference_impl.lamina.plan import Op, Phase, StepPlan
from reference_impl.lamina.prefill_worker import PrefillWorker
from reference_impl.lamina.results import LaminaRun, ModelShape, steps_to_tensor, traffic_to_tensor
from reference_impl.prompts import sampling_params
from reference_impl.supervisor import Stage

# How long a worker waits for rank 0's next plan (if rank 0 dies, the receive fails at once instead).
_CTRL_TIMEOUT_S = 24 * 3600.0


def serve_worker(worker: ComputeWorker | AttentionWorker | PrefillWorker, fabric, clock: WorkerClock) -> None:
    """Runs plans from rank 0 until STOP; then sends rank 0 this worker's times and traffic."""
    is_compute = isinstance(worker, ComputeWorker)
    is_prefill = isinstance(worker, PrefillWorker)
    prompts = worker.prompts if isinstance(worker, AttentionWorker) else None
    steps = {Phase.PREFILL: 0, Phase.DECODE: 0}  # steps begun (redos not counted): test-fault indices
    while True:
        links = fabric.links(clock)
        if prompts is not None:  # prompt KV still arriving goes into the cache while the plan is awaited
            got = links.recv_while(0, "ctrl", _CTRL_TIMEOUT_S, prompts.accept)
        else:
            got = links.recv(0, "ctrl", timeout_s=_CTRL_TIMEOUT_S)
        if got is None:
            raise WorkerFailure(f"rank {worker.rank} lost rank 0 (the scheduler) and stops")
        plan = StepPlan.decode(got[0])
        if plan.op == Op.STOP:
            supervisor.report(Stage.SHUTDOWN)
            supervisor.fault_point("shutdown")
            clock.mark_step(plan.step_id, "stop")
            links.send(0, "stats", [steps_to_tensor(clock.steps), traffic_to_tensor(fabric.traffic())])
            links.flush()
            return
        if plan.op == Op.REGROUP:
            if prompts is not None:
                prompts.complete_all()  # nothing of the old epoch may stay in flight
            links.send(0, "ack", [torch.zeros(1, dtype=torch.int64)])
            links.flush()
            fabric.regroup(plan.epoch)
            if is_compute:
                bind_tp_group(worker.model, fabric.tp_group())
            clock.mark_step(plan.step_id, "regroup")
            continue
        if plan.op in (Op.STEP, Op.PREFILL) and not plan.redo:
            if is_prefill:  # its own job: a failure now is "during prefill step N" of this worker
                supervisor.report(Stage.PREFILL, steps[Phase.PREFILL])
            supervisor.fault_point(plan.phase.name.lower(), steps[plan.phase])
            steps[plan.phase] += 1
        out = worker.execute(plan, links)
        if is_prefill:
            supervisor.report(Stage.SERVING)
        if is_compute:
            links.send(0, "status", [status_tensor(out.poisoned, links.dead)])
        links.flush()
        clock.mark_step(plan.step_id, _step_kind(plan))


def _step_kind(plan: StepPlan) -> str:
    if plan.op == Op.REBUILD:
        return "rebuild"
    return "prefill" if plan.op == Op.PREFILL or plan.phase == Phase.PREFILL else "decode"


def serve_scheduler(
    worker: ComputeWorker, fabric, cfg: LaminaConfig, requests: list[Request], num_blocks: int, respawn=None
) -> LaminaRun:
    """Rank 0: serves every request with the Engine, then stops the workers and assembles the run."""
    clock = WorkerClock(device=worker.device)
    executor = LaminaExecutor(worker, fabric, cfg, num_blocks, clock, respawn)
    try:
        if cfg.prefill_workers:  # admission stays reserve-all: the prefill pool holds no KV of its own
            engine = DisaggregatedEngine(executor, sampling_params(cfg), max_batch_size=cfg.max_batch_size)
        else:
            engine = LaminaEngine(
                executor,
                sampling_params(cfg),
                max_batch_size=cfg.max_batch_size,
                scheduler=cfg.scheduler_config,
            )
        engine_run = engine.run(requests)
    except BaseException:
        executor.abort()  # tell the other ranks to exit; their figures are not waited for
        raise
    supervisor.report(Stage.SHUTDOWN)
    workers = executor.stop()
    supervisor.fault_point("shutdown")
    return LaminaRun(
        engine=engine_run,
        config=cfg,
        model=ModelShape.of(worker.model.config, cfg.dtype),
        workers=tuple(sorted(workers, key=lambda w: w.rank)),
        traffic=executor.traffic,
        decode_token_layers=executor.decode_token_layers,
        header_bytes_per_message=fabric.header_bytes_per_message,
        recoveries=tuple(executor.recovery.events),
    )
