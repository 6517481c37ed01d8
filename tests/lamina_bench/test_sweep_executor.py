"""The executor seam of a sweep (no Ray): one row per point whatever an executor hands over, and the
choice of executor on the command line."""

from __future__ import annotations

import io
import tomllib

import pytest

from lamina_bench.errors import UserInputError
from lamina_bench.results.store import RunStore
from lamina_bench.sweep.executor import executor_named
from lamina_bench.sweep.run import LocalExecutor, Progress, run_sweep
from lamina_bench.sweep.spec import QUICK_SPEC, parse_spec


class _Sloppy:
    """Hands over the first point's row twice and never the last point's."""

    name = "sloppy"

    def run(self, todo, job, recorder) -> None:
        local = LocalExecutor()
        local.run(todo[:-1], job, recorder)
        local.run(todo[:1], job, recorder)


def test_a_point_handed_over_twice_is_stored_once_and_a_missing_one_is_a_failed_row(tmp_path):
    raw = tomllib.loads(QUICK_SPEC.read_text())
    del raw["measured"]
    spec = parse_spec(raw)  # 4 modeled points
    store = RunStore.create(tmp_path, "sloppy", devices=[])
    outcome = run_sweep(
        spec, store, list(spec.points), progress=Progress(4, io.StringIO()), executor=_Sloppy()
    )
    rows = {r.point_id: r for r in store.rows()}
    assert len(rows) == 4 and outcome.failed == 1
    missing = rows[spec.points[-1].point_id]
    assert missing.status == "failed" and "no row" in missing.error
    assert sum(r.ok for r in rows.values()) == 3


@pytest.mark.parametrize(
    "name, address, devices, message",
    [
        ("dask", None, None, "unknown executor 'dask'; valid: local, ray"),
        ("local", "127.0.0.1:6379", None, "apply to --executor ray only"),
        ("local", None, "compute=H100", "apply to --executor ray only"),
    ],
)
def test_bad_executor_options_are_one_line_errors(name, address, devices, message):
    with pytest.raises(UserInputError, match=message):
        executor_named(name, address, devices)
