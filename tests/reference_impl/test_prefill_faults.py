"""Faults of a prefill worker (and of an attention worker beside prefill workers) in whole runs.

Lamina runs 1 compute + 2 attention + 1 prefill worker: rank 0 scheduler and compute worker, ranks 1, 2
attention workers 0, 1, rank 3 prefill worker 0. A prefill worker killed (SIGKILL) or stopped (SIGSTOP,
a hang) at start-up or while the run serves ends the run with one line of WorkerFailure (it is not
replaced) within 30 s, and no process is left; after the run's steps it only loses its figures. An
attention worker that dies beside prefill workers is replaced as without them (the prefill jobs in
flight end first), and the tokens do not change. Heartbeat timeout 3 s (10 s by default).
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from reference_impl.errors import WorkerFailure
from reference_impl.faults import FAULT_ENV
from reference_impl.lamina import LaminaConfig, generate_lamina
from tests.reference_impl import test_faults as base
from tests.reference_impl.test_faults import KILLED, MARK_ENV, REPO, REQUESTS, SILENT

# the fixtures of the fault tests: a tiny GQA checkpoint, its reference tokens, the leftover-process mark
model_dir, reference, mark = base.model_dir, base.reference, base.mark

H = 3.0
WHO = "rank 3 (prefill worker 0)"
WHEN = {"startup": "during start-up", "load": "during start-up", "prefill=1": "during prefill step 1"}


def _config(model_dir: str) -> LaminaConfig:
    return LaminaConfig(
        model_dir=model_dir, attention_workers=2, prefill_workers=1, ignore_eos=True, heartbeat_timeout_s=H
    )


@pytest.mark.parametrize(
    "point, sig",
    [
        ("prefill=1", "KILL"),
        pytest.param("prefill=1", "STOP", marks=pytest.mark.slow),
        pytest.param("startup", "KILL", marks=pytest.mark.slow),
        pytest.param("load", "STOP", marks=pytest.mark.slow),
    ],
)
def test_a_failed_prefill_worker_ends_the_run_in_one_line(point, sig, model_dir, mark, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, f"3:{point}:{sig}")
    started = time.monotonic()
    with pytest.raises(WorkerFailure) as err:
        generate_lamina(_config(model_dir), REQUESTS)
    how = KILLED if sig == "KILL" else SILENT
    reason = "; a prefill worker is not replaced" if point == "prefill=1" else ""
    assert str(err.value) == f"{WHO} {how} {WHEN[point]}{reason}"
    assert err.value.failure.since_fault_s < (1.0 if sig == "KILL" else H + 1.0)
    assert time.monotonic() - started < 30
    base._assert_nothing_left(mark)


@pytest.mark.slow  # ~6 s; `make test-slow`
def test_a_prefill_worker_lost_at_shutdown_leaves_the_tokens(model_dir, reference, mark, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "3:shutdown:KILL")
    run = generate_lamina(_config(model_dir), REQUESTS)
    assert [c.output_ids for c in run.completions] == reference
    assert 3 not in [w.rank for w in run.workers] and not run.recoveries
    base._assert_nothing_left(mark)


@pytest.mark.slow  # replacing an attention worker runs in make test without prefill workers (test_lamina.py)
@pytest.mark.parametrize("fault", ["2:decode=2:KILL", "1:prefill=2:KILL"])
def test_an_attention_worker_beside_prefill_workers_is_replaced(
    fault, model_dir, reference, mark, monkeypatch
):
    monkeypatch.setenv(FAULT_ENV, fault)
    started = time.monotonic()
    run = generate_lamina(_config(model_dir), REQUESTS)
    assert [c.output_ids for c in run.completions] == reference
    (event,) = run.recoveries
    assert event.roles == ("attention",) and event.dead_ranks == (int(fault[0]),)
    assert time.monotonic() - started < 30
    base._assert_nothing_left(mark)


@pytest.mark.slow  # the same fault through the runtime is tested above; this adds the CLI line
def test_command_line_reports_a_dead_prefill_worker_in_one_line(model_dir, tmp_path, mark):
    env = dict(os.environ, **{FAULT_ENV: "3:prefill=1:KILL", MARK_ENV: mark})
    options = ("generate", "--system", "lamina", "--attention-workers", "2", "--prefill-workers", "1")
    command = base._command("lamina_bench.cli", model_dir, base._prompts(tmp_path), *options, "--ignore-eos")
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert time.monotonic() - started < 30
    line = f"lamina-bench: error: {WHO} {KILLED} during prefill step 1; a prefill worker is not replaced\n"
    assert (done.returncode, done.stderr, done.stdout) == (1, line, "")
    base._assert_nothing_left(mark)


@pytest.mark.parametrize(
    "options, message",
    [
        (("--system", "lamina", "--prefill-workers", "-2"), "prefill workers must be >= 0"),
        (("--prefill-workers", "1"), "--prefill-workers 1 needs --system lamina"),
    ],
)
def test_bad_prefill_worker_options_are_one_line_and_exit_code_2(options, message, model_dir, tmp_path):
    command = base._command("lamina_bench.cli", model_dir, base._prompts(tmp_path), "generate", *options)
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("lamina-bench: error: ") and message in done.stderr
    assert done.stderr.count("\n") == 1
