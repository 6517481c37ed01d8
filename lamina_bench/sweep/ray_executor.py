"""`run --executor ray`: the points of a sweep as Ray tasks on a cluster; this process writes the run.

Tasks and what each asks the cluster for (Ray resources):
    measured     one task per point; on CPU one CPU per process of the run (homogeneous: tp; Lamina:
                 compute + attention workers); on CUDA one GPU per process, and with --ray-devices
                 (e.g. compute=H100,attention=H20) as many units of each device type's custom resource
                 as the point has workers of that role (a node started with --resources '{"H100": 8}')
    prediction   one task per (model, device, dtype): the profile it is calibrated from is taken once,
                 on a node like the measured points' (1 CPU, or 1 GPU of the compute device type)
    modeled      batches of about ceil(points / (2 x cluster CPUs)) points (at most ray_map.MAX_BATCH),
                 1 CPU each
A task runs `run.execute` for each of its points on the worker and returns the rows, the telemetry
samples and the profiles it took; nothing is written on the workers (no shared file system needed).
The driver stores each row through the Recorder, the moment its task ends, so --resume works as with
the local executor.

Failures: a point that fails is a failed row (as locally). A task that raises is a failed row for each
of its points. A task that is lost (its worker process or node died, its result is gone) runs once more;
lost twice, each of its points is a failed row naming the loss. A task no node of the cluster can ever
hold (resources no node has) is a failed row at once, instead of waiting forever. So every point gets
exactly one row.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import ray
from ray.exceptions import RayError, RayTaskError

from lamina_bench.measure.nvml import TelemetrySampler
from lamina_bench.sweep import run as sweep_run
from lamina_bench.sweep.points import Point
from lamina_bench.sweep.ray_map import batch_size, first_line
from lamina_bench.sweep.run import SweepJob
from reference_impl.ray_cluster import check_address, connect


@dataclass(frozen=True)
class Task:
    """Points that run together as one Ray task, and what the task asks the cluster for."""

    points: tuple[Point, ...]
    num_cpus: float
    num_gpus: float = 0.0
    resources: Mapping[str, float] = field(default_factory=dict)  # custom resources (device types)
    attempt: int = 0

    def demand(self) -> dict[str, float]:
        """The task's demand in the form of a node's resources (CPU, GPU, custom)."""
        out = {"CPU": self.num_cpus, **self.resources}
        return out | ({"GPU": self.num_gpus} if self.num_gpus else {})


def _processes(point: Point) -> dict[str, int]:
    c = point.config
    if c.system == "lamina":
        # prefill workers run the compute pool's kind of work (dense GEMMs): they take compute devices
        return {"compute": c.compute_workers + c.prefill_workers, "attention": c.attention_workers}
    return {"compute": c.tp}


def measured_task(point: Point, devices: Mapping[str, str]) -> Task:
    """One measured point: a CPU per process, or a GPU per process (+ device types with --ray-devices)."""
    roles = _processes(point)
    world = sum(roles.values())
    if point.config.device != "cuda":
        return Task((point,), num_cpus=world)
    merged: dict[str, float] = {}
    for role, n in roles.items():  # compute and attention may name the same device type
        if role in devices:
            merged[devices[role]] = merged.get(devices[role], 0.0) + n
    return Task((point,), num_cpus=1, num_gpus=world, resources=merged)


def prediction_tasks(points: Sequence[Point], devices: Mapping[str, str]) -> list[Task]:
    """Predictions grouped by the profile they need (model, device, dtype): one task per profile."""
    groups: dict[tuple[str, str, str], list[Point]] = {}
    for p in points:
        groups.setdefault((p.config.model, p.config.device, p.config.dtype), []).append(p)
    tasks = []
    for (_, device, _), group in groups.items():
        if device == "cuda":
            typed = {devices["compute"]: 1.0} if "compute" in devices else {}
            tasks.append(Task(tuple(group), num_cpus=1, num_gpus=1, resources=typed))
        else:
            tasks.append(Task(tuple(group), num_cpus=1))
    return tasks


def modeled_tasks(points: Sequence[Point], cluster_cpus: float) -> list[Task]:
    """Modeled points in batches of ceil(n / (2 x cluster CPUs)), at most ray_map.MAX_BATCH: two waves of tasks
    keep every CPU busy while a slow batch finishes."""
    if not points:
        return []
    size = batch_size(len(points), cluster_cpus)
    return [Task(tuple(points[i : i + size]), num_cpus=1) for i in range(0, len(points), size)]


def plan_tasks(todo: Sequence[Point], devices: Mapping[str, str], cluster_cpus: float) -> list[Task]:
    """Every point of `todo` in exactly one task: predictions first (as locally), then measured, modeled."""
    by_kind = {k: [p for p in todo if p.kind == k] for k in ("prediction", "measured", "modeled")}
    return [
        *prediction_tasks(by_kind["prediction"], devices),
        *(measured_task(p, devices) for p in by_kind["measured"]),
        *modeled_tasks(by_kind["modeled"], cluster_cpus),
    ]


def fits_somewhere(task: Task, nodes: Sequence[Mapping[str, float]]) -> bool:
    """Whether some node's total resources hold the task's demand (else it would wait forever)."""
    demand = task.demand()
    return any(all(node.get(k, 0.0) >= v for k, v in demand.items() if v) for node in nodes)


def run_points(points: Sequence[Point], job: SweepJob) -> tuple[list, list, dict]:
    """A task's body, on a worker: each point's row (wall_s set), the telemetry samples taken meanwhile,
    and the profiles taken (file name -> profile). Failures are rows (run.execute)."""
    rows = []
    with TelemetrySampler() as sampler:
        ctx = sweep_run._Context(store=None, spec_path=job.spec_path, sampler=sampler)
        for point in points:
            t0 = time.perf_counter()
            row = sweep_run.execute(point, ctx, job.repeats)
            rows.append(row.replace(wall_s=time.perf_counter() - t0))
        samples = sampler.samples()
    return rows, samples, ctx.profile_files


class RayExecutor:
    """Points as Ray tasks on the cluster at `address` (None: a private cluster on this machine)."""

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        device_resources: Mapping[str, str] | None = None,
        body: Callable[[tuple[Point, ...], SweepJob], tuple] = run_points,
    ) -> None:
        check_address(address)
        self.address = address
        self.devices = dict(device_resources or {})
        self.body = body  # what each task runs on its worker: run_points, or a function that calls it
        self.lost = 0  # tasks lost (worker or node died) and run again, over this executor's sweeps

    def run(self, todo: Sequence[Point], job: SweepJob, recorder) -> None:
        if not todo:
            return
        with connect(self.address):
            nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
            cpus = sum(n.get("CPU", 0.0) for n in nodes)
            print(f"ray: {len(nodes)} nodes, {cpus:g} CPUs", file=sys.stderr, flush=True)
            driver = _Driver(job, recorder, nodes, self.body)
            try:
                driver.run(plan_tasks(todo, self.devices, cpus))
            finally:
                self.lost += driver.lost


class _Driver:
    """Submits tasks, collects their results as they finish, and retries a lost task once."""

    def __init__(
        self, job: SweepJob, recorder, nodes: Sequence[Mapping[str, float]], body=run_points
    ) -> None:
        self.job, self.recorder, self.nodes = job, recorder, nodes
        self.remote = ray.remote(body)
        self.pending: dict = {}  # ObjectRef -> (Task, submitted at)
        self.lost = 0

    def run(self, tasks: Sequence[Task]) -> None:
        try:
            for task in tasks:
                self._submit(task)
            while self.pending:
                ready, _ = ray.wait(list(self.pending), num_returns=1)
                for ref in ready:
                    self._collect(ref, *self.pending.pop(ref))
        finally:  # Ctrl-C or an error in the driver: stop the rest (the run stays resumable)
            for ref in self.pending:
                ray.cancel(ref, force=True)

    def _submit(self, task: Task) -> None:
        if not fits_somewhere(task, self.nodes):
            self._fail(task, time.perf_counter(), f"no node of the Ray cluster has {task.demand()}")
            return
        options = {"num_cpus": task.num_cpus, "max_retries": 0, "resources": dict(task.resources)}
        if task.num_gpus:
            options["num_gpus"] = task.num_gpus
        ref = self.remote.options(**options).remote(task.points, self.job)
        self.pending[ref] = (task, time.perf_counter())

    def _collect(self, ref, task: Task, t0: float) -> None:
        try:
            rows, samples, profiles = ray.get(ref)
        except RayTaskError as exc:  # the task itself raised (execute turns point errors into rows)
            self._fail(task, t0, f"Ray task failed: {first_line(exc)}")
            return
        except RayError as exc:  # lost: a worker or node died, the result is gone, ...
            self.lost += 1
            if task.attempt == 0:
                print(f"ray: task of {len(task.points)} points lost ({first_line(exc)}); running it again",
                      file=sys.stderr, flush=True)  # fmt: skip
                self._submit(Task(task.points, task.num_cpus, task.num_gpus, task.resources, attempt=1))
            else:
                self._fail(task, t0, f"Ray task lost twice: {first_line(exc)}")
            return
        for name, profile in profiles.items():
            self.recorder.profile(name, profile)
        self.recorder.telemetry(samples)
        for point, row in zip(task.points, rows, strict=True):
            self.recorder.row(point, row)

    def _fail(self, task: Task, t0: float, error: str) -> None:
        wall_s = time.perf_counter() - t0
        for point in task.points:
            self.recorder.row(
                point, sweep_run.failed_row(point, self.job.spec_path, error).replace(wall_s=wall_s)
            )
