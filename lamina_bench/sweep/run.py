"""Running a sweep: every point measured, predicted or simulated, each row stored the moment it finishes.

A point that fails becomes a row with status "failed" and its error, and the sweep goes on. Predictions
run first: the profile of this machine they are calibrated from is taken before the measured points
start worker processes (the row timestamps record the order).

Where the points run is an executor's business (sweep/executor.py): `LocalExecutor` runs them one after
the other in this process (the default); `sweep/ray_executor.py` runs them as Ray tasks. Either way
only this process writes the run folder, through a `Recorder`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lamina_bench.catalog.workloads import load_trace
from lamina_bench.measure.config import MeasuredConfig
from lamina_bench.measure.nvml import TelemetrySampler
from lamina_bench.measure.telemetry import combine_summaries
from lamina_bench.model.capacity import capacity
from lamina_bench.model.profiles import Profile, write_profile
from lamina_bench.model.simulator import simulate
from lamina_bench.results.row import PointRow
from lamina_bench.results.stats import aggregate_repeats
from lamina_bench.results.store import RunStore
from lamina_bench.sweep.points import ModeledConfig, Point
from lamina_bench.sweep.spec import SweepSpec


@dataclass(frozen=True)
class SweepOutcome:
    run_dir: Path
    ran: int
    skipped: int  # already finished (resume)
    failed: int
    wall_s: float


@dataclass(frozen=True)
class SweepJob:
    """What every point of one sweep shares (sent to workers as it is): the spec's path for the rows'
    repro_command, and the measured repeats per point."""

    spec_path: str
    repeats: int


class Executor(Protocol):
    """Runs points somewhere, handing each finished point's row to the Recorder (sweep/executor.py)."""

    name: str

    def run(self, todo: Sequence[Point], job: SweepJob, recorder: Recorder) -> None:
        """Runs every point of `todo`, handing each one's row to `recorder.row` as it finishes."""


class Progress:
    """One status line per finished point with percent done and ETA (from the mean time per point).

    The ETA is the wall time per finished point so far times the points left, so with points running
    side by side (an executor over a cluster) it follows the whole cluster's rate."""

    def __init__(self, total: int, stream=None):
        self.total, self.done, self.start = total, 0, time.perf_counter()
        self.stream = stream if stream is not None else sys.stderr

    def update(self, label: str, status: str, wall_s: float) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        eta_s = elapsed / self.done * (self.total - self.done)
        print(
            f"[{self.done:>{len(str(self.total))}}/{self.total}] {100 * self.done / self.total:3.0f}% "
            f"ETA {int(eta_s) // 60}:{int(eta_s) % 60:02d}  {label}  {status} ({wall_s:.1f} s)",
            file=self.stream,
            flush=True,
        )


@dataclass
class _Context:
    """State shared by the points of one sweep: local profiles (taken on first need) and telemetry.

    Each profile taken is written into the run folder of `store`; without a store (a worker of another
    machine) it is kept in `profile_files` for the process that writes the run."""

    store: RunStore | None
    spec_path: str
    sampler: TelemetrySampler
    profiles: dict[tuple[str, str, str], Profile] = field(default_factory=dict)
    profile_files: dict[str, Profile] = field(default_factory=dict)  # file name in the run -> profile

    def local_profile(self, config: MeasuredConfig) -> Profile:
        """A profile of this machine for the point's model, device and dtype (written into the run)."""
        key = (config.model, config.device, config.dtype)
        if key not in self.profiles:
            print(
                f"profiling {key[1]} ({key[0]}, {key[2]}) for the model's predictions ...",
                file=sys.stderr,
                flush=True,
            )
            from lamina_bench.measure.profile import ProfileSettings, profile_device  # torch: measured only

            profile = profile_device(ProfileSettings(model=key[0], device=key[1], dtype=key[2]))
            name = f"profile-{profile.name}-{Path(key[0]).name}-{key[2]}.json"
            if self.store is not None:
                write_profile(profile, self.store.path / name)
            self.profile_files[name] = profile
            self.profiles[key] = profile
        return self.profiles[key]


def _failed(row: PointRow, exc: BaseException) -> PointRow:
    message = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line
    return row.replace(status="failed", error=message)


def _simulated(base: PointRow, config: ModeledConfig) -> PointRow:
    slos = {"ttft_slo_ms": config.ttft_slo_ms or None, "tpot_slo_ms": config.tpot_slo_ms or None}
    system, trace = config.system_config(), load_trace(config.trace)
    result = simulate(
        system,
        trace,
        arrival=config.arrival,
        rate_per_s=config.rate_per_s or None,
        requests=config.requests or None,
        **slos,
    )
    fields = result.row_fields()
    if config.capacity:  # the capacity at the SLOs over the same requests (model/capacity.py)
        requests = config.requests or None  # None: capacity's default share of the trace
        found = capacity(system, trace, config.ttft_slo_ms, config.tpot_slo_ms, requests=requests)
        extra = {"capacity_req_per_s": found.rate_per_s, "capacity_usd_per_mtok": found.usd_per_mtok}
        fields["metrics"] = {**fields["metrics"], **{k: v for k, v in extra.items() if v is not None}}
    return base.replace(**fields)


def _predicted(base: PointRow, config: MeasuredConfig, ctx: _Context) -> PointRow:
    from lamina_bench.measure.run import predict_measured  # torch: measured points only

    prediction = predict_measured(config, ctx.local_profile(config))
    return base.replace(profile=prediction.profile, metrics=prediction.metrics())


def _measured(base: PointRow, config: MeasuredConfig, ctx: _Context, repeats: int) -> PointRow:
    """One row of `repeats` runs (median and CI from 3 on), with telemetry of the whole point."""
    from lamina_bench.measure.run import run_measured  # torch and the reference implementation

    rows, pools = [], {}
    with ctx.sampler.window(base.point_id):
        for i in range(repeats):
            try:
                timings = run_measured(config)
            except Exception as exc:  # noqa: BLE001 - a failing repeat is recorded, not raised
                rows.append(_failed(base.replace(repeat=i), exc))
                continue
            rows.append(base.replace(repeat=i, metrics=timings.metrics()))
            pools = pools or dict(timings.breakdown_ms or {})
    row = aggregate_repeats(rows, base.point_id) if repeats > 1 else rows[0].replace(repeat=None, repeats=1)
    telemetry = combine_summaries(ctx.sampler.window_summary(base.point_id))
    verdict = telemetry.pop("telemetry_verdict")
    present = {k: v for k, v in telemetry.items() if v is not None}
    return row.replace(pools=pools, telemetry_verdict=verdict, metrics={**row.metrics, **present})


def execute(point: Point, ctx: _Context, repeats: int) -> PointRow:
    """The row of one point; failures become a failed row with the error, never an exception."""
    base = point.row(repro_command(point, ctx.spec_path))
    try:
        if point.kind == "measured":
            return _measured(base, point.config, ctx, repeats)
        if point.kind == "prediction":
            return _predicted(base, point.config, ctx)
        return _simulated(base, point.config)
    except Exception as exc:  # noqa: BLE001 - a failed point is a row, and the sweep goes on
        return _failed(base, exc)


def repro_command(point: Point, spec_path: str) -> str:
    """The command that reproduces a point: `simulate` for a modeled one, else `run SPEC --point ID`."""
    c = point.config
    if not isinstance(c, ModeledConfig):
        return f"lamina-bench run {spec_path} --point {point.point_id}"
    cmd = (
        f"lamina-bench simulate --model {c.model} --system {c.system} --compute {c.compute} "
        f"--trace {c.trace} --arrival {c.arrival} --dtype {c.dtype} --prices {c.prices}"
    )
    if c.attention:
        cmd += f" --attention {c.attention} --pipeline-batches {c.pipeline_batches}"
    if c.requests:
        cmd += f" --requests {c.requests}"
    if c.max_batch:
        cmd += f" --max-batch {c.max_batch}"
    if c.arrival == "poisson":
        cmd += f" --rate {c.rate_per_s}"
    return cmd


def failed_row(point: Point, spec_path: str, error: str) -> PointRow:
    """A point's failed row with `error` (one line), e.g. for a point whose worker was lost."""
    return point.row(repro_command(point, spec_path)).replace(status="failed", error=" ".join(error.split()))


class Recorder:
    """The one writer of a run folder: rows, telemetry and profiles as an executor hands them over, with
    the progress line; every point is stored at most once per sweep (a second row for a point is
    dropped and counted in `duplicates`, never written)."""

    def __init__(self, store: RunStore, spec_path: str, stored: set[str], progress: Progress) -> None:
        self.store, self.spec_path, self.stored, self.progress = store, spec_path, stored, progress
        self.recorded: set[str] = set()
        self.failed = self.duplicates = 0

    def row(self, point: Point, row: PointRow) -> PointRow | None:
        """Stores a finished point's row (wall_s set) and prints its progress line."""
        if point.point_id in self.recorded:
            self.duplicates += 1
            return None
        row = _store_row(self.store, point, row, self.spec_path, self.stored)
        self.recorded.add(point.point_id)
        self.failed += not row.ok
        self.progress.update(point.label(), "ok" if row.ok else f"FAILED: {row.error}", row.wall_s)
        return row

    def telemetry(self, samples: Sequence) -> None:
        if samples:
            self.store.add_telemetry(list(samples))

    def profile(self, name: str, profile: Profile) -> None:
        """Writes a profile a worker took into the run folder (the first one of a name is kept)."""
        target = self.store.path / name
        if not target.exists():
            write_profile(profile, target)


def _store_row(store: RunStore, point: Point, row: PointRow, spec_path: str, stored: set[str]) -> PointRow:
    """Persist a point's row; a row that cannot be stored (e.g. a value JSON cannot hold) is stored as a
    failed row with that error instead, so a point is never a silent gap."""
    replace = point.point_id in stored
    try:
        return store.add_point(row, replace=replace)
    except (ValueError, TypeError) as exc:
        failed = _failed(point.row(repro_command(point, spec_path)), exc).replace(wall_s=row.wall_s)
        return store.add_point(failed, replace=replace)


def _flush_telemetry(recorder: Recorder, sampler: TelemetrySampler, written: int) -> int:
    """Persist the samples taken since the last flush; returns how many are persisted in all."""
    samples = sampler.samples()
    if len(samples) > written:
        recorder.telemetry(samples[written:])
    return len(samples)


class LocalExecutor:
    """Every point in this process, one after the other, in the order given (the default executor)."""

    name = "local"

    def run(self, todo: Sequence[Point], job: SweepJob, recorder: Recorder) -> None:
        written = 0
        with TelemetrySampler() as sampler:
            ctx = _Context(store=recorder.store, spec_path=job.spec_path, sampler=sampler)
            for point in todo:
                t0 = time.perf_counter()
                row = execute(point, ctx, job.repeats)
                recorder.row(point, row.replace(wall_s=time.perf_counter() - t0))
                written = _flush_telemetry(recorder, sampler, written)  # a crash loses this point's samples
            _flush_telemetry(recorder, sampler, written)


def run_sweep(
    spec: SweepSpec,
    store: RunStore,
    points: list[Point],
    spec_path: str = "<default>",
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> SweepOutcome:
    """Run every point not yet in `store` (resume), persisting each row the moment it finishes; the points
    run where `executor` puts them (default: LocalExecutor, in this process)."""
    start = time.perf_counter()
    rows = store.rows()
    finished = {r.point_id for r in rows if r.ok}  # failed points run again on --resume
    stored = {r.point_id for r in rows}
    todo = [p for p in points if p.point_id not in finished]
    todo.sort(key=lambda p: p.kind != "prediction")  # predictions first (module doc)
    recorder = Recorder(store, spec_path, stored, progress or Progress(len(todo)))
    (executor or LocalExecutor()).run(todo, SweepJob(spec_path, spec.repeats), recorder)
    missing = [p for p in todo if p.point_id not in recorder.recorded]
    for point in missing:  # an executor that lost a point without a row: a failed row, never a gap
        row = failed_row(point, spec_path, "the executor returned no row for this point")
        recorder.row(point, row.replace(wall_s=0.0))
    return SweepOutcome(
        store.path, len(todo), len(points) - len(todo), recorder.failed, time.perf_counter() - start
    )
