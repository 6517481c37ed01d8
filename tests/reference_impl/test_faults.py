"""Faults in whole runs: a process of any kind killed (SIGKILL) or stopped (SIGSTOP, a hang) at
start-up, at a prefill or decode step, or at shutdown ends in a recovery with the reference tokens or
in one line of WorkerFailure (exit code 1 on the command line) within 30 s, and no process is left.

Faults come from the test-only hook REFERENCE_IMPL_FAULT (reference_impl/faults.py). Lamina runs
1 compute + 2 attention workers (rank 0: scheduler and compute worker; ranks 1, 2: attention workers
0, 1); the homogeneous engine runs --tp 2. The heartbeat timeout is 3 s here (10 s by default). The
reference tokens are the homogeneous engine's in this process (equal to transformers': test_lamina.py).
A representative case of each kind runs by default; the full matrix is marked slow.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from reference_impl.config import GenerateConfig
from reference_impl.engine import Request
from reference_impl.errors import WorkerFailure
from reference_impl.faults import FAULT_ENV
from reference_impl.homogeneous import generate
from reference_impl.lamina import LaminaConfig, generate_lamina
from tests.reference_impl.tiny_models import build_tiny_model

H = 3.0  # heartbeat timeout of these runs
MARK_ENV = "REFERENCE_IMPL_TEST_MARK"  # inherited by every process a run starts: finds leftovers
REPO = Path(__file__).resolve().parents[2]
KILLED = "was killed by SIGKILL"
SILENT = f"was silent for {H:g} s (no heartbeat, no CPU time: stopped or hung) and was killed"
WHEN = {
    "startup": "during start-up",
    "load": "during start-up",
    "prefill=0": "during prefill step 0",
    "decode=2": "during decode step 2",
    "shutdown": "during shutdown",
}


def _requests() -> list[Request]:
    rng = random.Random(3)
    lengths, arrivals = [4, 17, 2, 9, 6], [0, 0, 1, 2, 3]
    return [
        Request(i, tuple(rng.randrange(256) for _ in range(n)), max_new_tokens=6, arrival_step=a)
        for i, (n, a) in enumerate(zip(lengths, arrivals, strict=True))
    ]


REQUESTS = _requests()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return str(build_tiny_model("llama31-gqa", tmp_path_factory.mktemp("faults") / "llama31-gqa", seed=0))


@pytest.fixture(scope="module")
def reference(model_dir) -> list[tuple[int, ...]]:
    run = generate(GenerateConfig(model_dir=model_dir, ignore_eos=True), REQUESTS)
    return [c.output_ids for c in run.completions]


@pytest.fixture
def mark(monkeypatch) -> str:
    value = uuid.uuid4().hex
    monkeypatch.setenv(MARK_ENV, value)
    return value


def _marked(value: str) -> list[int]:
    """Processes (other than this one) whose environment carries the mark: anything a run left behind.

    multiprocessing's resource tracker is not counted: the first spawn of a test session starts it,
    and it serves this process until it exits.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile, or not ours
        if f"{MARK_ENV}={value}".encode() in env.split(b"\0") and b"resource_tracker" not in command:
            found.append(int(entry.name))
    return found


def _zombie_children() -> list[int]:
    """This process's children that ended but were not reaped."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if state == "Z" and int(ppid) == os.getpid():
                found.append(int(entry.name))
    return found


def _assert_nothing_left(value: str) -> None:
    assert _marked(value) == [] and _zombie_children() == []


def _lamina_case(rank: int, point: str) -> str:
    """'recovered' (same tokens after replacing the rank), 'survived' (same tokens, its figures lost),
    or 'failure' (WorkerFailure)."""
    if rank == 0 or point in ("startup", "load"):
        return "failure"
    return "survived" if point == "shutdown" else "recovered"


LAMINA_WHO = {
    0: "rank 0 (scheduler and compute worker)",
    1: "rank 1 (attention worker 0)",
    2: "rank 2 (attention worker 1)",
}
POINTS = ("startup", "load", "prefill=0", "decode=2", "shutdown")
# by default: a hang found and recovered from; a death while the group forms (once a 300 s wait)
LAMINA_DEFAULT = {(2, "decode=2", "STOP"), (0, "startup", "KILL")}
TP_DEFAULT = {(1, "decode=2", "KILL")}


def _cases(ranks, default):
    return [
        pytest.param(r, p, s, marks=() if (r, p, s) in default else pytest.mark.slow, id=f"{r}:{p}:{s}")
        for r in ranks
        for p in POINTS
        for s in ("KILL", "STOP")
    ]


@pytest.mark.parametrize("rank, point, sig", _cases((0, 2), LAMINA_DEFAULT))
def test_lamina_fault(rank, point, sig, model_dir, reference, mark, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, f"{rank}:{point}:{sig}")
    cfg = LaminaConfig(model_dir=model_dir, attention_workers=2, ignore_eos=True, heartbeat_timeout_s=H)
    started = time.monotonic()
    case = _lamina_case(rank, point)
    if case == "failure":
        with pytest.raises(WorkerFailure) as err:
            generate_lamina(cfg, REQUESTS)
        elapsed = time.monotonic() - started
        how = KILLED if sig == "KILL" else SILENT
        assert str(err.value) == f"{LAMINA_WHO[rank]} {how} {WHEN[point]}"
        assert err.value.failure.since_fault_s < (1.0 if sig == "KILL" else H + 1.0)
    else:
        run = generate_lamina(cfg, REQUESTS)
        elapsed = time.monotonic() - started
        assert [c.output_ids for c in run.completions] == reference
        if case == "recovered":
            (event,) = run.recoveries
            assert event.dead_ranks == (rank,) and event.roles == ("attention",)
        else:
            assert not run.recoveries and rank not in [w.rank for w in run.workers]
    assert elapsed < 30
    _assert_nothing_left(mark)


@pytest.mark.parametrize("rank, point, sig", _cases((0, 1), TP_DEFAULT))
def test_homogeneous_tp2_fault(rank, point, sig, model_dir, mark, monkeypatch):
    """A tensor-parallel rank cannot be replaced: every fault ends the run with WorkerFailure."""
    monkeypatch.setenv(FAULT_ENV, f"{rank}:{point}:{sig}")
    cfg = GenerateConfig(model_dir=model_dir, tp=2, ignore_eos=True, heartbeat_timeout_s=H)
    started = time.monotonic()
    with pytest.raises(WorkerFailure) as err:
        generate(cfg, REQUESTS)
    how = KILLED if sig == "KILL" else SILENT
    when = WHEN[point]
    assert (
        str(err.value) == f"tensor-parallel rank {rank} of 2 {how} {when}; the group cannot go on without it"
    )
    assert err.value.failure.since_fault_s < (1.0 if sig == "KILL" else H + 1.0)
    assert time.monotonic() - started < 30
    _assert_nothing_left(mark)


@pytest.mark.slow
def test_lamina_tp_compute_rank_cannot_be_replaced(model_dir, mark, monkeypatch):
    """2 compute ranks (one tensor-parallel replica) + 2 attention workers: compute rank 1 is killed."""
    monkeypatch.setenv(FAULT_ENV, "1:decode=2:KILL")
    cfg = LaminaConfig(
        model_dir=model_dir, compute_workers=2, attention_workers=2, ignore_eos=True, heartbeat_timeout_s=H
    )
    with pytest.raises(WorkerFailure) as err:
        generate_lamina(cfg, REQUESTS)
    assert str(err.value).startswith(
        "rank 1 (compute worker, replica 0, tensor-parallel rank 1) was killed by SIGKILL "
        "during decode step 2; "
    )
    _assert_nothing_left(mark)


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["KILL", "STOP"])
def test_lamina_compute_replica_is_replaced(sig, model_dir, reference, mark, monkeypatch):
    """Rotational pipeline, 2 compute replicas: replica 1 (rank 1) is replaced from the checkpoint."""
    monkeypatch.setenv(FAULT_ENV, f"1:decode=2:{sig}")
    cfg = LaminaConfig(
        model_dir=model_dir,
        compute_workers=2,
        attention_workers=2,
        pipeline_batches=3,
        ignore_eos=True,
        heartbeat_timeout_s=H,
    )
    run = generate_lamina(cfg, REQUESTS)
    assert [c.output_ids for c in run.completions] == reference
    (event,) = run.recoveries
    assert (event.dead_ranks, event.roles) == ((1,), ("compute",))
    _assert_nothing_left(mark)


# ---- the command lines -----------------------------------------------------------------------------


def _prompts(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"
    lines = [
        {"prompt_ids": list(r.prompt_ids), "max_new_tokens": r.max_new_tokens, "arrival_step": r.arrival_step}
        for r in REQUESTS
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _command(module: str, model_dir: str, prompts: Path, *options: str) -> list[str]:
    """`python -m module [generate] --model-dir ... --prompts ... options`."""
    command = [sys.executable, "-m", module]
    if options[:1] == ("generate",):
        command, options = [*command, "generate"], options[1:]
    return [*command, "--model-dir", model_dir, "--prompts", str(prompts), *options]


LAMINA_CLI = ("generate", "--system", "lamina", "--compute-workers", "1", "--attention-workers", "2")


@pytest.mark.parametrize(
    "module, options, fault, line",
    [
        pytest.param(
            "lamina_bench.cli",
            LAMINA_CLI,
            "0:startup:KILL",
            f"lamina-bench: error: rank 0 (scheduler and compute worker) {KILLED} during start-up",
            marks=pytest.mark.slow,
            id="lamina-bench-lamina-0:startup:KILL",
        ),
        pytest.param(
            "lamina_bench.cli",
            ("generate", "--tp", "2"),
            "1:load:STOP",
            f"lamina-bench: error: tensor-parallel rank 1 of 2 {SILENT} during start-up; "
            "the group cannot go on without it",
            marks=pytest.mark.slow,
            id="lamina-bench-tp2-1:load:STOP",
        ),
        pytest.param(
            "reference_impl.lamina",
            ("--attention-workers", "2"),
            "2:load:KILL",
            f"error: rank 2 (attention worker 1) {KILLED} during start-up",
            marks=pytest.mark.slow,
            id="reference_impl.lamina-2:load:KILL",
        ),
        pytest.param(
            "reference_impl.launch",
            ("--tp", "2"),
            "0:decode=2:STOP",
            f"error: tensor-parallel rank 0 of 2 {SILENT} during decode step 2; "
            "the group cannot go on without it",
            marks=pytest.mark.slow,
            id="reference_impl.launch-tp2-0:decode=2:STOP",
        ),
    ],
)
def test_command_line_reports_a_failure_in_one_line_with_exit_code_1(
    module, options, fault, line, model_dir, tmp_path, mark
):
    env = dict(os.environ, **{FAULT_ENV: fault, MARK_ENV: mark})
    command = _command(
        module, model_dir, _prompts(tmp_path), *options, "--ignore-eos", "--heartbeat-timeout", str(H)
    )
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert time.monotonic() - started < 30
    assert (done.returncode, done.stderr) == (1, line + "\n")
    assert done.stdout == ""
    _assert_nothing_left(mark)


@pytest.mark.parametrize(
    "main_module, patched, options, prefix",
    [
        ("lamina_bench.cli", "reference_impl.lamina.generate_lamina", LAMINA_CLI, "lamina-bench: error: "),
        (
            "lamina_bench.cli",
            "reference_impl.homogeneous.generate",
            ("generate", "--tp", "2"),
            "lamina-bench: error: ",
        ),
        ("reference_impl.lamina.__main__", "reference_impl.lamina.__main__.generate_lamina", (), "error: "),
        ("reference_impl.launch", "reference_impl.homogeneous.generate", ("--tp", "2"), "error: "),
    ],
    ids=["lamina-bench-lamina", "lamina-bench-tp2", "reference_impl.lamina", "reference_impl.launch"],
)
def test_every_command_line_maps_worker_failure_to_one_line_and_exit_code_1(
    main_module, patched, options, prefix, model_dir, tmp_path, monkeypatch, capsys
):
    """The mapping alone (the runs above show the failures themselves); bad input stays exit code 2."""
    import importlib

    message = "rank 2 (attention worker 1) was killed by SIGKILL during decode step 3"

    def fail(*args, **kwargs):
        raise WorkerFailure(message)

    monkeypatch.setattr(patched, fail)
    main = importlib.import_module(main_module).main
    argv = _command("m", model_dir, _prompts(tmp_path), *options)[3:]  # real: --tp is checked against it
    assert main(argv) == 1
    assert capsys.readouterr().err == f"{prefix}{message}\n"


def _process_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


@pytest.mark.parametrize(
    "sig, code, stderr",
    [
        pytest.param(signal.SIGTERM, 128 + signal.SIGTERM, "", marks=pytest.mark.slow, id="SIGTERM"),
        pytest.param(
            signal.SIGINT,
            130,
            "error: interrupted; every worker process was stopped\n",
            marks=pytest.mark.slow,
            id="SIGINT",
        ),
    ],
)
def test_a_signalled_launcher_stops_every_process(sig, code, stderr, model_dir, tmp_path, mark):
    """An attention worker hangs at decode step 1 (heartbeat timeout 10 min); the launcher is signalled."""
    env = dict(os.environ, **{FAULT_ENV: "2:decode=1:STOP", MARK_ENV: mark})
    command = _command(
        "reference_impl.lamina",
        model_dir,
        _prompts(tmp_path),
        "--attention-workers",
        "2",
        "--heartbeat-timeout",
        "600",
    )
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO
    )
    try:
        deadline = time.monotonic() + 60
        while not any(_process_state(p) == "T" for p in _marked(mark)):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            time.sleep(0.1)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (proc.returncode, err) == (code, stderr)
    _assert_nothing_left(mark)
