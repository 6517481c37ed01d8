"""reference_impl.supervisor and faults: results, exits, heartbeats and stages of supervised processes, and
that none outlives its supervisor (failure, SIGTERM, Ctrl-C, a SIGKILLed supervisor).

The children (supervised_children.py) import only the standard library, so each starts in about a
second; the heartbeat timeout is 2 s, the smallest the configs accept.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from reference_impl.errors import ConfigError
from reference_impl.faults import FAULT_ENV, Fault, fault_from_env, parse_fault
from reference_impl.supervisor import Failure, Stage, Supervisor
from tests.reference_impl import supervised_children as kids

H = 2.0
REPO = Path(__file__).resolve().parents[2]


def _gone(pid: int) -> bool:
    """True once the process no longer exists: killed and reaped (a zombie still has /proc/<pid>)."""
    return not Path(f"/proc/{pid}").exists() if Path("/proc").exists() else _no_such_process(pid)


def _no_such_process(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _events(sup: Supervisor, until, timeout_s: float = 30.0) -> list:
    """Polls until `until(events so far)` or timeout_s; returns the events."""
    events, deadline = [], time.monotonic() + timeout_s
    while not until(events) and time.monotonic() < deadline:
        events += sup.poll()
    return events


def _failures(events) -> list[Failure]:
    return [e for _, e in events if isinstance(e, Failure)]


def test_a_result_comes_back_and_the_process_ends():
    with Supervisor(1, H) as sup:
        child = sup.start(0, kids.answer, (21,))
        events = _events(sup, lambda ev: any(e == ("done", 42) for _, e in ev))
        sup.close(grace_s=10)
    assert [e for _, e in events] == [("done", 42)]
    assert child.proc.exitcode == 0 and not sup.failures


def test_a_killed_process_is_reported_with_its_signal_and_stage():
    with Supervisor(2, H, lambda r: f"rank {r} (test worker)") as sup:
        sup.start(1, kids.signal_self, ("SIGKILL",))
        (failure,) = _failures(_events(sup, _failures))
    assert (failure.rank, failure.how, failure.stage, failure.step) == (
        1,
        "was killed by SIGKILL",
        Stage.DECODE,
        4,
    )
    assert sup.describe(failure) == "rank 1 (test worker) was killed by SIGKILL during decode step 4"


def test_a_stopped_process_is_found_silent_then_killed_and_reaped():
    with Supervisor(1, H) as sup:
        child = sup.start(0, kids.signal_self, ("SIGSTOP",))
        (failure,) = _failures(_events(sup, _failures))
    assert failure.how == "was silent for 2 s (no heartbeat, no CPU time: stopped or hung) and was killed"
    assert failure.when == "during decode step 4"
    assert _gone(child.pid)


@pytest.mark.parametrize(
    "signal_name, low, high", [("KILL", 0.0, 1.0), ("STOP", H - 0.6, H + 1.5)], ids=["KILL", "STOP"]
)
def test_an_injected_fault_is_detected_in_time(signal_name, low, high):
    """The test hook fires at start-up; a death shows at once, a stop after the heartbeat timeout
    (counted from the last sign of life, up to a heartbeat interval before the stop)."""
    with Supervisor(1, H) as sup:
        sup.start(0, kids.sleep_forever, (), fault=Fault(0, "startup", None, signal_name))
        (failure,) = _failures(_events(sup, _failures))
    assert failure.when == "during start-up"
    assert low <= failure.since_fault_s < high


def test_an_exception_is_one_line_then_a_failure():
    with Supervisor(1, H) as sup:
        sup.start(0, kids.fail, ())
        events = _events(sup, _failures)
    (message,) = [e for _, e in events if not isinstance(e, Failure)]
    assert message[:3] == ("error", "exception", "ValueError: fails on purpose")
    assert "Traceback" in message[3]
    assert _failures(events)[0].how == "failed (ValueError: fails on purpose)"


def test_an_exit_without_a_result_is_a_failure():
    with Supervisor(1, H) as sup:
        sup.start(0, kids.exit_quietly, ())
        (failure,) = _failures(_events(sup, _failures))
    assert failure.how == "exited with code 3 before reporting a result"
    assert failure.when == "during start-up"


def test_a_long_step_keeps_its_heartbeat():
    """A process busy for 2 heartbeat timeouts (torch kernels and Python bytecode) is not taken for hung."""
    with Supervisor(1, H) as sup:
        sup.start(0, kids.busy, (2 * H,))
        events = _events(sup, lambda ev: ev, timeout_s=60)
    assert [e for _, e in events] == [("done", "done")]


def test_close_kills_and_reaps_every_process():
    with Supervisor(3, H) as sup:
        children = [sup.start(r, kids.sleep_forever, ()) for r in range(3)]
        _events(sup, lambda ev: all(c.stage()[0] == Stage.SERVING for c in children))
    assert all(_gone(c.pid) for c in children)
    assert [c.proc.exitcode for c in children] == [-signal.SIGKILL] * 3


_SUPERVISING_SCRIPT = """
    import signal, sys, time
    from reference_impl.supervisor import Stage, Supervisor

    # Ctrl-C raises KeyboardInterrupt even when this test runs in a background job, whose processes
    # start with SIGINT ignored (a shell without job control does that to `cmd &`)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from tests.reference_impl import supervised_children as kids

    with Supervisor(2, 60.0) as sup:
        children = [sup.start(r, kids.sleep_forever, ()) for r in range(2)]
        while not all(c.stage()[0] == Stage.SERVING for c in children):
            sup.poll()
        print(" ".join(str(c.pid) for c in children), flush=True)
        while True:
            sup.poll()
"""


def _supervising_process() -> tuple[subprocess.Popen, list[int]]:
    """A process that supervises two sleeping children; returns it and the children's pids."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_SUPERVISING_SCRIPT)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    return proc, [int(p) for p in line.split()]


def _wait_gone(pids: list[int], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(_gone(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize(
    "sig, code", [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, None)], ids=["SIGTERM", "SIGINT"]
)
def test_a_signalled_supervisor_kills_its_children_before_it_exits(sig, code):
    proc, pids = _supervising_process()
    proc.send_signal(sig)
    returncode = proc.wait(timeout=30)
    assert all(_gone(p) for p in pids)  # at once: the supervisor reaped them before it exited
    if code is not None:
        assert returncode == code
    else:
        assert returncode != 0  # KeyboardInterrupt


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_children_die_with_a_sigkilled_supervisor():
    proc, pids = _supervising_process()
    proc.kill()  # no cleanup of its own can run
    proc.wait(timeout=30)
    assert _wait_gone(pids)  # the kernel kills them (PR_SET_PDEATHSIG); init reaps them


# ---- the test-only fault hook ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, fault",
    [
        ("2:decode=3:STOP", Fault(2, "decode", 3, "STOP")),
        ("0:startup", Fault(0, "startup", None, "KILL")),
        ("1:shutdown:KILL", Fault(1, "shutdown", None, "KILL")),
        (" 1:prefill=0 ", Fault(1, "prefill", 0, "KILL")),
    ],
)
def test_fault_specs_parse(text, fault):
    assert parse_fault(text, world_size=3) == fault
    assert fault.matches(fault.point, fault.index) and not fault.matches("load")


@pytest.mark.parametrize(
    "text, message",
    [
        ("2", "expected RANK:POINT"),
        ("x:decode=1", "expected RANK:POINT"),
        ("1:lunch", "POINT is one of startup, load, prefill, decode, shutdown"),
        ("1:decode", "take a step index"),
        ("1:startup=2", "take a step index"),
        ("1:decode=-1", "take a step index"),
        ("1:decode=1:TERM", "SIGNAL is one of KILL, STOP"),
        ("3:startup", "this run has ranks 0..2"),
    ],
)
def test_bad_fault_specs_are_config_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_fault(text, world_size=3)


def test_no_fault_unless_the_environment_asks(monkeypatch):
    monkeypatch.delenv(FAULT_ENV, raising=False)
    assert fault_from_env(3) is None
    monkeypatch.setenv(FAULT_ENV, "")
    assert fault_from_env(3) is None
    monkeypatch.setenv(FAULT_ENV, "1:load:STOP")
    assert fault_from_env(3) == Fault(1, "load", None, "STOP")
