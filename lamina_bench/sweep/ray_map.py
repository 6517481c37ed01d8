"""`search --executor ray`: map(fn, items) over a Ray cluster, the items in batches, each batch a Ray task.

`RayMap` has the built-in `map`'s contract: fn of every item, in the items' order. The items go in
batches of ceil(items / (2 x cluster CPUs)) (at most MAX_BATCH), one Ray task (1 CPU) each; `fn` is put
into the object store once and shared by every task. Each task's results come back to this process,
which puts them in the items' order.

Failures: an exception that `fn` raises on a worker is raised here as it was (as `map` would). A task
that is lost (its worker process or node died, its result is gone) runs once more; lost twice, the map
ends with a WorkerFailure of one line naming the items it held. So no item is ever missing from the result.

Progress: one line on stderr per finished task (items done, percent, ETA from the mean time per item so far),
as a sweep prints one per point.

This module imports Ray, and little else, on the driver and on each worker that runs a task.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager

import ray
from ray.exceptions import RayError, RayTaskError

from reference_impl.errors import WorkerFailure
from reference_impl.ray_cluster import check_address, connect

MAX_BATCH = 64  # items (modeled points, configurations) per task: a lost task costs at most this many reruns


def batch_size(items: int, cluster_cpus: float) -> int:
    """Items per task: ceil(items / (2 x cluster CPUs)), 1 to MAX_BATCH. Two waves of tasks keep every CPU
    busy while a slow batch finishes."""
    return min(MAX_BATCH, max(1, math.ceil(items / max(1.0, 2 * cluster_cpus))))


def apply(fn: Callable, items: list) -> list:
    """A task's body, on a worker: fn of each item, in order."""
    return [fn(item) for item in items]


class RayMap:
    """map(fn, items) over the Ray cluster at `address` (None: a private cluster on this machine), joined
    at the first map that has items and left by `close` (see `cluster_map`)."""

    def __init__(self, address: str | None = None, stream=None) -> None:
        check_address(address)
        self.address = address
        self.stream = stream if stream is not None else sys.stderr
        self.lost = 0  # tasks lost (worker or node died) and run again, over every map
        self.cluster_cpus = 0.0
        self.remote = None
        self._connection = ExitStack()

    def close(self) -> None:
        """Leave the cluster (if this map joined it)."""
        self._connection.close()

    def _connect(self) -> None:
        if self.remote is not None:
            return
        self._connection.enter_context(connect(self.address))
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        self.cluster_cpus = sum(n.get("CPU", 0.0) for n in nodes)
        print(f"ray: {len(nodes)} nodes, {self.cluster_cpus:g} CPUs", file=self.stream, flush=True)
        self.remote = ray.remote(apply)

    def __call__(self, fn: Callable, items: Iterable) -> list:
        items = list(items)
        if not items:
            return []
        self._connect()
        size = batch_size(len(items), self.cluster_cpus)
        starts = range(0, len(items), size)
        name = getattr(getattr(fn, "func", fn), "__name__", "fn").strip("_")
        print(f"ray: {name} of {len(items)} items in {len(starts)} tasks", file=self.stream, flush=True)
        fn_ref = ray.put(fn)
        pending = {self._submit(fn_ref, items[s : s + size]): (s, 0) for s in starts}
        results: list = [None] * len(items)
        done, t0 = 0, time.perf_counter()
        try:
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                start, attempt = pending.pop(ref)
                batch = items[start : start + size]
                try:
                    results[start : start + len(batch)] = ray.get(ref)
                except RayTaskError as exc:  # fn raised: as the built-in map would
                    raise exc.cause from None
                except RayError as exc:  # lost: a worker or node died, the result is gone, ...
                    self.lost += 1
                    what = f"task of {name} items {start}-{start + len(batch) - 1}"
                    if attempt:
                        raise WorkerFailure(f"Ray {what} lost twice: {first_line(exc)}") from None
                    print(
                        f"ray: {what} lost ({first_line(exc)}); running it again",
                        file=self.stream,
                        flush=True,
                    )
                    pending[self._submit(fn_ref, batch)] = (start, 1)
                    continue
                done += len(batch)
                self._progress(name, done, len(items), time.perf_counter() - t0)
        finally:  # an error or Ctrl-C here: stop the rest
            for ref in pending:
                ray.cancel(ref, force=True)
        return results

    def _submit(self, fn_ref, batch: list):
        return self.remote.options(num_cpus=1, max_retries=0).remote(fn_ref, batch)

    def _progress(self, name: str, done: int, total: int, elapsed_s: float) -> None:
        eta_s = elapsed_s / done * (total - done)
        print(
            f"[{done:>{len(str(total))}}/{total}] {100 * done / total:3.0f}% "
            f"ETA {int(eta_s) // 60}:{int(eta_s) % 60:02d}  {name}  ({elapsed_s:.1f} s)",
            file=self.stream,
            flush=True,
        )


@contextmanager
def cluster_map(address: str | None, stream=None) -> Iterator[RayMap]:
    """A RayMap over the cluster at `address`, left when the block ends."""
    ray_map = RayMap(address, stream)
    try:
        yield ray_map
    finally:
        ray_map.close()


def first_line(exc: BaseException) -> str:
    """The exception's type and the first line of its message (at most 300 characters)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]
