"""`run --executor ray`: tasks and their resources, the quick sweep on a local Ray cluster against the
local executor, a node killed mid-sweep, resume, and Ray never imported on the default path."""

from __future__ import annotations

import io
import threading
import time
import tomllib
from pathlib import Path

import pytest

from lamina_bench.measure.run import MeasuredConfig
from lamina_bench.results.store import RunStore
from lamina_bench.sweep.points import Point
from lamina_bench.sweep.run import LocalExecutor, Progress, run_sweep
from lamina_bench.sweep.spec import QUICK_SPEC, parse_spec
from tests.ray_support import (
    command_line,
    descendants,
    held_on,
    is_loopback_hex,
    listening_addresses,
    running,
    without_ray,
)

ray_executor = pytest.importorskip("lamina_bench.sweep.ray_executor", reason="Ray is not installed")


def _quick_raw(predict: bool = True, systems=("homogeneous", "lamina")) -> dict:
    raw = tomllib.loads(QUICK_SPEC.read_text())
    raw["measured"][0] |= {"predict": predict, "systems": list(systems)}
    return raw


def _modeled_raw() -> dict:
    """The quick sweep's [[modeled]] block alone (4 points)."""
    raw = tomllib.loads(QUICK_SPEC.read_text())
    del raw["measured"]
    return raw


def _run(spec, tmp_path: Path, name: str, executor) -> tuple[RunStore, object]:
    store = RunStore.create(tmp_path, name, devices=[])
    outcome = run_sweep(spec, store, list(spec.points), progress=Progress(len(spec.points), io.StringIO()),
                        executor=executor)  # fmt: skip
    return store, outcome


def _values(store: RunStore, kind: str = "modeled") -> dict[str, dict]:
    return {r.point_id: r.metrics for r in store.rows() if r.source == kind and r.predicts is None}


# ---- tasks and their resources (no cluster) ----------------------------------------------------------


def _measured(**options) -> Point:
    base = dict(model="bench-llama-gqa", system="lamina", device="cuda", dtype="fp16", batch_size=1,
                context_len=64, new_tokens=8)  # fmt: skip
    return Point("measured", MeasuredConfig(**(base | options)))


def test_a_measured_point_asks_for_a_gpu_per_process_and_its_device_types():
    devices = {"compute": "H100", "attention": "H20"}
    task = ray_executor.measured_task(_measured(compute_workers=2, attention_workers=4), devices)
    assert (task.num_gpus, dict(task.resources)) == (6, {"H100": 2.0, "H20": 4.0})  # 2 + 4 processes
    homogeneous = ray_executor.measured_task(_measured(system="homogeneous", tp=4), devices)
    assert (homogeneous.num_gpus, dict(homogeneous.resources)) == (4, {"H100": 4.0})
    same_type = ray_executor.measured_task(_measured(attention_workers=2), {"compute": "X", "attention": "X"})
    assert dict(same_type.resources) == {"X": 3.0}  # 1 compute + 2 attention of one type
    cpu = ray_executor.measured_task(_measured(device="cpu", attention_workers=2), devices)
    assert (cpu.num_cpus, cpu.num_gpus, dict(cpu.resources)) == (3, 0, {})  # a CPU per process


def test_every_point_is_in_exactly_one_task_and_predictions_share_a_profile():
    spec = parse_spec(_quick_raw())
    tasks = ray_executor.plan_tasks(list(spec.points), {}, cluster_cpus=1)
    ids = [p.point_id for t in tasks for p in t.points]
    assert sorted(ids) == sorted(p.point_id for p in spec.points) and len(ids) == len(set(ids)) == 12
    assert [t.points[0].kind for t in tasks[:1]] == ["prediction"] and len(tasks[0].points) == 4
    modeled = [t for t in tasks if t.points[0].kind == "modeled"]
    assert [len(t.points) for t in modeled] == [2, 2]  # 4 points, ceil(4 / (2 x 1 CPU)) = 2 per task
    assert [len(t.points) for t in ray_executor.modeled_tasks(modeled[0].points * 100, 1)] == [64, 64, 64, 8]


def test_a_task_no_node_can_hold_is_found():
    nodes = [{"CPU": 2.0, "H100": 4.0}, {"CPU": 2.0, "H20": 4.0}]
    fits = ray_executor.Task((), num_cpus=1, resources={"H20": 4.0})
    assert ray_executor.fits_somewhere(fits, nodes)
    assert not ray_executor.fits_somewhere(ray_executor.Task((), num_cpus=3), nodes)  # 3 CPUs on no node
    mixed = ray_executor.Task((), num_cpus=1, resources={"H100": 1.0, "H20": 1.0})
    assert not ray_executor.fits_somewhere(mixed, nodes)  # both types on one node: none has
    assert not ray_executor.fits_somewhere(ray_executor.Task((), num_cpus=1, num_gpus=1), nodes)


# ---- on a local cluster ----------------------------------------------------------------------------


def test_the_quick_sweep_on_a_cluster_has_the_local_executors_points_and_values(ray_cluster, tmp_path):
    spec = parse_spec(_quick_raw(predict=False, systems=("homogeneous",)))  # no 40 s profile here
    local, _ = _run(spec, tmp_path, "local", LocalExecutor())
    executor = ray_executor.RayExecutor(address=ray_cluster.address)
    store, outcome = _run(spec, tmp_path, "ray", executor)
    assert outcome.failed == 0 and outcome.ran == len(spec.points) == 6
    assert {r.point_id for r in store.rows()} == {r.point_id for r in local.rows()}
    assert _values(store) == _values(local) and len(_values(store)) == 4  # modeled: the same numbers
    measured = {r.point_id: r for r in store.rows() if r.source == "measured"}
    assert len(measured) == 2 and all(r.value("throughput_tok_per_s") > 0 for r in measured.values())
    assert sorted(p.name for p in (store.path / "points").iterdir()) == sorted(
        f"{p.point_id}.json" for p in spec.points
    )  # the driver wrote every row into the run folder, once


@pytest.mark.slow
def test_the_whole_quick_sweep_on_a_cluster_has_the_local_executors_points_and_values(ray_cluster, tmp_path):
    spec = parse_spec(_quick_raw())  # 12 points, predictions from a profile taken on the worker
    local, _ = _run(spec, tmp_path, "local", LocalExecutor())
    store, outcome = _run(spec, tmp_path, "ray", ray_executor.RayExecutor(address=ray_cluster.address))
    assert outcome.failed == 0 and outcome.ran == 12
    assert sorted(r.point_id for r in store.rows()) == sorted(r.point_id for r in local.rows())
    assert _values(store) == _values(local) and len(_values(store)) == 4
    assert list(store.path.glob("profile-*.json"))  # the worker's profile, written by the driver


def test_resume_on_a_cluster_runs_only_what_is_missing(ray_cluster, tmp_path):
    spec = parse_spec(_modeled_raw())
    points = list(spec.points)
    store = RunStore.create(tmp_path, "resume", devices=[])
    run_sweep(spec, store, points[:2], progress=Progress(2, io.StringIO()))  # a run that stopped half-way
    executor = ray_executor.RayExecutor(address=ray_cluster.address)
    outcome = run_sweep(spec, store, points, progress=Progress(2, io.StringIO()), executor=executor)
    assert (outcome.ran, outcome.skipped, outcome.failed) == (2, 2, 0)
    assert sorted(r.point_id for r in store.rows()) == sorted(p.point_id for p in points)


def test_a_node_killed_mid_sweep_leaves_every_point_exactly_once(ray_cluster, tmp_path):
    """A task is held on an extra node until the node is killed (tests/ray_support.held_on): its points
    run again elsewhere, and every point has one row."""
    raw = _modeled_raw()
    raw["modeled"][0]["batch_caps"] = [8, 16, 24, 32, 48, 64, 96, 0]  # 16 modeled points
    spec = parse_spec(raw)
    node = ray_cluster.add_node(num_cpus=2)
    node_pids = descendants({info.process.pid for infos in node.all_processes.values() for info in infos})
    gate = tmp_path / "gate"
    gate.mkdir()
    # 6 CPUs: 8 tasks of 2 points; 4 wait on the head and the first node, so some run on the extra node
    executor = ray_executor.RayExecutor(address=ray_cluster.address, body=held_on(node.node_id, str(gate)))
    store = RunStore.create(tmp_path, "lost", devices=[])
    result: dict = {}
    sweep = threading.Thread(
        target=lambda: result.update(
            outcome=run_sweep(
                spec, store, list(spec.points), executor=executor, progress=Progress(16, io.StringIO())
            )
        ),  # fmt: skip
    )
    sweep.start()
    try:
        deadline = time.monotonic() + 60
        while not (held := list(gate.glob(f"{node.node_id}-*"))) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held, "no task reached the extra node"
        ray_cluster.remove_node(node)  # the node goes away with a task on it
    finally:
        (gate / "killed").touch()  # the tasks on the other nodes go on
        sweep.join(timeout=120)
    assert not sweep.is_alive()
    assert executor.lost >= len(held) >= 1  # the node's tasks were lost, and ran again elsewhere
    rows = store.rows()
    assert sorted(r.point_id for r in rows) == sorted(p.point_id for p in spec.points)  # each once, no gap
    assert result["outcome"].failed == 0 and all(r.ok for r in rows)
    assert len(list((store.path / "points").glob("*.json"))) == 16
    deadline = time.monotonic() + 10
    while (alive := {p for p in node_pids if running(p)}) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive, [command_line(p) for p in alive]  # no process of the killed node is left
    held_pids = {int(path.name.rsplit("-", 1)[1]) for path in held}
    assert not {p for p in held_pids if running(p)}  # nor the worker that held the task


def test_the_cluster_listens_on_loopback_only(ray_cluster):
    pids = descendants(ray_cluster.pids())
    listening = listening_addresses(pids)
    assert listening  # GCS, raylets, workers, ...
    outside = {
        pid: addresses for pid, addresses in listening.items() if not all(map(is_loopback_hex, addresses))
    }
    assert not outside, {command_line(pid)[:80]: a for pid, a in outside.items()}


# ---- without Ray ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--quick", "--executor", "ray", "--no-report"],
        ["generate", "--system", "lamina", "--launcher", "ray", "--model-dir", "m", "--prompts", "p.jsonl"],
    ],
    ids=["run", "generate"],
)
def test_without_ray_the_ray_options_say_how_to_install_it(argv, tmp_path):
    """The check comes before the model is read, so "m" need not exist."""
    if argv[0] == "run":
        argv = [*argv, "--out", str(tmp_path)]
    done = without_ray(*argv)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "needs Ray" in line and "pip install 'lamina-bench[ray]'" in line
    assert not list(tmp_path.glob("quick-*")), "nothing is written before the error"


def test_the_default_path_never_imports_ray(tmp_path):
    spec = tmp_path / "spec.toml"
    raw = (
        QUICK_SPEC.read_text().split("[[measured]]")[0]
        + "[[modeled]]"
        + QUICK_SPEC.read_text().split("[[modeled]]")[1]
    )
    spec.write_text(raw)
    done = without_ray("run", str(spec), "--out", str(tmp_path / "out"), "--no-report")
    assert done.returncode == 0, done.stderr
    assert "RAY-IMPORTS 0 0" in done.stdout  # not even an attempt to import it
