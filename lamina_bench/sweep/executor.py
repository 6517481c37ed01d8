"""Where a sweep's points run: the choice behind `run --executor`.

An executor (the `run.Executor` interface) takes the points still to run and hands each finished
point's row (and the telemetry samples and profiles taken for it) to the sweep's `Recorder`
(sweep/run.py), the only writer of the run folder. It must hand over exactly one row per point: a point that fails, or whose worker is lost,
is a failed row with the error. Two executors:

    local   every point in this process, one after the other (run.LocalExecutor; the default)
    ray     every point a Ray task on a cluster (ray_executor.RayExecutor; needs `lamina-bench[ray]`)

Nothing here imports Ray; choosing "ray" does, and without Ray installed the choice is a one-line error
that says how to install it.
"""

from __future__ import annotations

from lamina_bench.errors import UserInputError
from lamina_bench.sweep.mappers import SEARCH_EXECUTORS as EXECUTORS  # one list of names for run and search
from lamina_bench.sweep.run import Executor, LocalExecutor


def executor_named(name: str, address: str | None = None, device_resources: str | None = None) -> Executor:
    """The executor `run --executor NAME` asks for; --address and --ray-devices apply to "ray" only."""
    if name not in EXECUTORS:
        raise UserInputError(f"unknown executor {name!r}; valid: {', '.join(EXECUTORS)}")
    if name == "local":
        if address is not None or device_resources is not None:
            raise UserInputError("--address and --ray-devices apply to --executor ray only")
        return LocalExecutor()
    from reference_impl.ray_cluster import require_ray

    require_ray("--executor ray")
    from lamina_bench.sweep.ray_executor import RayExecutor
    from reference_impl.ray_cluster import parse_devices

    return RayExecutor(address=address, device_resources=parse_devices(device_resources))
