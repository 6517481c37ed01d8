"""`search --executor ray`: map(fn, items) over a local Ray cluster (items in order, in batches of tasks,
errors as the built-in map's, a lost task run once more, lost twice an error of one line), and a search
on the cluster with the local search's ranking and numbers."""

from __future__ import annotations

import io
import json
from functools import partial

import pytest

from lamina_bench import cli
from lamina_bench.catalog.models import get_model
from lamina_bench.errors import UserInputError
from reference_impl.errors import WorkerFailure
from tests.lamina_bench.test_search_map import SEARCH_ARGS
from tests.ray_support import exit_always, exit_once

ray_map = pytest.importorskip("lamina_bench.sweep.ray_map", reason="Ray is not installed")


def test_batch_sizes():
    # ceil(items / (2 x CPUs)), between 1 and MAX_BATCH (64)
    assert [ray_map.batch_size(n, 4) for n in (1, 8, 9, 50, 1000)] == [1, 1, 2, 7, 64]
    assert ray_map.batch_size(5, 0) == 5  # no CPU reported: one task (the divisor is at least 1)


def test_an_empty_map_joins_no_cluster():
    stream = io.StringIO()
    mapper = ray_map.RayMap("127.0.0.1:1", stream)  # nothing listens there
    assert mapper([].__getitem__, []) == [] and mapper.remote is None and stream.getvalue() == ""


def test_a_bad_address_is_one_line_before_any_work(capsys):
    assert cli.main([*SEARCH_ARGS, "--executor", "ray", "--address", "nowhere"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (
        "lamina-bench: error: --address must be HOST:PORT of the Ray head (e.g. 127.0.0.1:6379), got 'nowhere'\n"
    )


def test_items_come_back_in_order_from_batches_of_tasks(ray_cluster):
    stream = io.StringIO()
    with ray_map.cluster_map(ray_cluster.address, stream) as mapper:
        assert mapper(partial(pow, exp=2), range(50)) == [i * i for i in range(50)]
        assert mapper(abs, [-3]) == [3]
    lines = stream.getvalue().splitlines()
    assert lines[0] == "ray: 2 nodes, 4 CPUs" and lines[1] == "ray: pow of 50 items in 8 tasks"  # 7 a task
    progress = [line for line in lines if line.startswith("[")]
    assert len(progress) == 8 + 1 and progress[7].startswith("[50/50] 100% ETA 0:00  pow")
    assert mapper.lost == 0


def test_an_error_on_a_worker_is_raised_as_the_built_in_map_would(ray_cluster):
    raises = pytest.raises(UserInputError, match="^unknown model 'no-such-model'")
    with ray_map.cluster_map(ray_cluster.address, io.StringIO()) as mapper, raises:
        mapper(get_model, ["llama3-8b", "no-such-model"])


def test_a_lost_task_runs_once_more(ray_cluster, tmp_path):
    stream = io.StringIO()
    with ray_map.cluster_map(ray_cluster.address, stream) as mapper:
        # one task of the six (1 item each on 4 CPUs) ends its worker process; its rerun returns
        assert mapper(partial(exit_once, str(tmp_path / "exited")), range(6)) == list(range(6))
    assert mapper.lost == 1 and (tmp_path / "exited").exists()
    (lost,) = [line for line in stream.getvalue().splitlines() if "lost" in line]
    assert lost.startswith("ray: task of exit_once items ") and lost.endswith("; running it again")


def test_a_task_lost_twice_is_an_error_of_one_line(ray_cluster):
    with (
        ray_map.cluster_map(ray_cluster.address, io.StringIO()) as mapper,
        pytest.raises(WorkerFailure) as failure,
    ):
        mapper(exit_always, ["x"])
    assert mapper.lost == 2
    message = str(failure.value)
    assert message.startswith("Ray task of exit_always items 0-0 lost twice: ") and "\n" not in message


def test_search_on_a_cluster_ranks_as_the_local_search(ray_cluster, capsys):
    """Estimates, replays and capacities all on the cluster: the same JSON, byte for byte."""
    argv = [*SEARCH_ARGS, "--rank-by", "capacity", "--ttft-slo-ms", "3000", "--tpot-slo-ms", "40",
            "--budget-usd-per-hour", "12"]  # fmt: skip
    argv[argv.index("--requests") + 1] = "40"  # few requests and few configurations: fast capacity searches
    assert cli.main(argv) == 0
    local = capsys.readouterr()
    assert cli.main([*argv, "--executor", "ray", "--address", ray_cluster.address]) == 0
    on_ray = capsys.readouterr()
    assert on_ray.out == local.out and local.err == ""
    ranked = json.loads(on_ray.out)["ranked"]
    assert len(ranked) >= 2 and all(c["capacity"]["capacity_usd_per_mtok"] is not None for c in ranked)
    err = on_ray.err.splitlines()
    stages = [line.split(" of ")[0] for line in err if " items in " in line]
    assert stages == ["ray: screen_one", "ray: replay_scored", "ray: with_capacity"]
    assert err[0] == "ray: 2 nodes, 4 CPUs" and err[-1].startswith(f"[{len(ranked)}/{len(ranked)}] 100%")
