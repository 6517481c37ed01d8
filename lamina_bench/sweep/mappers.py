"""Where a search's per-configuration work runs: the choice behind `search --executor`.

    local   in this process, one configuration after the other (the built-in `map`; the default)
    ray     in batches of Ray tasks on a cluster (ray_map.RayMap; needs `lamina-bench[ray]`)

Either gives the same result (model/search.py takes the map as `map_fn`). Nothing here imports Ray, nor
anything heavy (the sweep runner imports torch); choosing "ray" does, and without Ray installed the choice
is a one-line error that says how to install it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from lamina_bench.errors import UserInputError

SEARCH_EXECUTORS = ("local", "ray")  # also the names `run --executor` takes (sweep/executor.py)


@contextmanager
def mapper_named(name: str, address: str | None = None) -> Iterator[Callable]:
    """The map `search --executor NAME` asks for, usable for the block (a Ray cluster is joined at the
    first map with items and left when the block ends); --address applies to "ray" only."""
    if name not in SEARCH_EXECUTORS:
        raise UserInputError(f"unknown executor {name!r}; valid: {', '.join(SEARCH_EXECUTORS)}")
    if name == "local":
        if address is not None:
            raise UserInputError("--address applies to --executor ray only")
        yield map
        return
    from reference_impl.ray_cluster import require_ray

    require_ray("--executor ray")
    from lamina_bench.sweep.ray_map import cluster_map

    with cluster_map(address) as ray_map:
        yield ray_map
