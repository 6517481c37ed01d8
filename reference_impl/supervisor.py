"""Supervision of a local run's processes: exits, heartbeats, stages, and no process left behind.

The spawning launchers start every process of a run through a `Supervisor` (lamina/launch.py: each
Lamina rank and each replacement; distributed.run_in_group: the homogeneous engine's tensor-parallel
ranks). The supervisor, in the launching process:

- sees a process exit at once (its sentinel), with its exit code or signal, and what it reported;
- reads its heartbeat: a counter in shared memory that a daemon thread of the process bumps every
  HEARTBEAT_INTERVAL_S, whatever the main thread computes (torch releases the interpreter lock in
  its kernels, and Python code yields it every few ms), while a stopped (SIGSTOP) or frozen process
  stops every thread. C code that holds the interpreter lock for long (loading a shared library under
  memory pressure took seconds here) delays the beats, so the CPU time the process uses (Linux:
  /proc/<pid>/stat) counts as a sign of life too: a process is silent when neither advanced for the
  heartbeat timeout. A silent process is SIGKILLed and from then on is a dead one like any other;
- reads each process's messages (its result or error, rank 0's requests for replacements) over a
  pipe of its own, on a reader thread, so a process killed in the middle of a message blocks nobody;
- kills and reaps every process it started, whatever ends the run: a failure, Ctrl-C, SIGTERM. The
  processes ignore SIGINT (a terminal sends it to the whole process group; the supervisor decides)
  and, on Linux, die with the supervising thread (PR_SET_PDEATHSIG) should it be SIGKILLed itself.

Each process publishes its stage next to its heartbeat (start-up, prefill or decode step N,
recovery, shutdown), so a failure is reported with what the process was doing. What a failure means
for the run (recover or stop) is the launcher's decision; the supervisor reports it as a `Failure`.

Nothing here imports torch: a spawned process starts its heartbeat before it imports anything heavy.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from reference_impl.errors import ConfigError, WorkerFailure
from reference_impl.faults import Fault

# ---- timeouts, in seconds ----------------------------------------------------------------------------
# A heartbeat thread bumps its process's counter this often: cheap (one shared-memory write), and
# frequent enough that HEARTBEAT_TIMEOUT_S spans 20 beats.
HEARTBEAT_INTERVAL_S = 0.5
# Default silence (no heartbeat and no CPU time) after which a process counts as hung (LaminaConfig /
# GenerateConfig heartbeat_timeout_s, --heartbeat-timeout). Gaps between beats measured here: under
# 0.5 s while torch is imported on a busy 2-core machine, over 2 s under heavy memory pressure (the
# CPU time, which advanced meanwhile, covers those). 10 s leaves a wide margin for a slow but live
# process and still finds, kills and reports a hung one well within 30 s.
HEARTBEAT_TIMEOUT_S = 10.0
# A spawned process must start its heartbeat within this: Python's start-up and the spawn bootstrap
# only, since torch is imported after the heartbeat starts (1.3 s at most measured here, 4 processes
# starting at once on a busy 2-core machine).
FIRST_BEAT_TIMEOUT_S = 20.0
# The supervisor's loop: how late it may see an exit, a silence or a message. Waiting on a queue with
# this timeout costs nothing measurable.
POLL_S = 0.05
# After a process reports an error, how long to look for another process's death: an error that a
# dead peer caused (a failed collective, a closed connection) is reported as that death. A SIGKILLed
# process's exit shows within milliseconds.
ERROR_GRACE_S = 1.0
# After a process exited, how long its reader thread may take to hand over what the process sent
# before (its pipe is closed, so the read ends at once: this bounds a pathological case only).
DRAIN_S = 2.0
# How long joining a SIGKILLed process may take (the kernel tears down its memory first).
KILL_JOIN_S = 10.0


class Stage(IntEnum):
    """What a supervised process is doing, as it publishes it (`report`)."""

    STARTING = 0  # start-up: importing, joining the process group, loading the model
    SERVING = 1  # ready; following the scheduler's steps (a Lamina worker)
    PREFILL = 2  # the step index says which
    DECODE = 3
    RECOVERY = 4  # Lamina rank 0 replacing dead ranks
    SHUTDOWN = 5  # the steps are done: stopping, reporting figures, handing over the result


# Fields of a process's shared slot (int64 each), then one flag per rank: "being replaced" (RECOVERY).
_BEAT, _STAGE, _STEP_STAGE, _STEP, _FAULT_NS = range(5)
_FIELDS = 5
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def describe_stage(stage: Stage, step_stage: Stage = Stage.STARTING, step: int = -1) -> str:
    """'during decode step 3', 'during start-up', ... (step_stage/step: the last step begun)."""
    step_text = f"{step_stage.name.lower()} step {step}" if step >= 0 else "the first step"
    return {
        Stage.STARTING: "during start-up",
        Stage.SERVING: "while serving",
        Stage.PREFILL: f"during prefill step {step}",
        Stage.DECODE: f"during decode step {step}",
        Stage.RECOVERY: f"during the recovery in {step_text}",
        Stage.SHUTDOWN: "during shutdown",
    }[stage]


# ---- inside a supervised process ---------------------------------------------------------------------


class _ThisProcess:
    """This process's link to its supervisor: its shared slot, its pipe, its injected fault."""

    def __init__(self, slot, conn, fault: Fault | None) -> None:
        self.slot = slot
        self.conn = conn
        self.fault = fault
        self.lock = threading.Lock()

    def send(self, message: tuple) -> None:
        data = pickle.dumps(message)
        with self.lock:
            self.conn.send_bytes(data)


_this: _ThisProcess | None = None  # set in a process a Supervisor started; None elsewhere


def supervised() -> bool:
    """True in a process a Supervisor started (it can report, and ask its supervisor for things)."""
    return _this is not None


def report(stage: Stage, step: int | None = None, recovering: Iterable[int] = ()) -> None:
    """Publishes what this process does now (no-op outside a supervised process).

    step: the index of a prefill or decode step (kept when None, so RECOVERY and its end name the
    step they interrupted); recovering: RECOVERY, the ranks being replaced.
    """
    if _this is None:
        return
    slot = _this.slot
    ranks = set(recovering)
    for r in range(len(slot) - _FIELDS):
        slot[_FIELDS + r] = int(r in ranks)
    if step is not None:
        slot[_STEP_STAGE], slot[_STEP] = int(stage), step
    slot[_STAGE] = int(stage)


def fault_point(point: str, index: int | None = None) -> None:
    """Test hook: fires this process's injected fault if it is for this point (faults.py); else nothing."""
    if _this is None or _this.fault is None or not _this.fault.matches(point, index):
        return
    fault, _this.fault = _this.fault, None  # fires once
    _this.slot[_FAULT_NS] = time.monotonic_ns()
    fault.fire()


def send(message: tuple) -> None:
    """Sends `message` (picklable) to the supervisor, e.g. Lamina rank 0's request for replacements."""
    if _this is None:
        raise RuntimeError("this process was not started by a Supervisor")
    _this.send(message)


def _heartbeat(slot) -> None:
    while True:
        slot[_BEAT] += 1
        time.sleep(HEARTBEAT_INTERVAL_S)


def _die_with_parent(parent_pid: int) -> None:
    """Linux: SIGKILL this process when the thread that spawned it ends (the supervisor SIGKILLed)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)  # the parent died before the prctl took effect


def _category(exc: BaseException) -> str:
    if isinstance(exc, ConfigError):
        return "config"
    if isinstance(exc, WorkerFailure):
        return "failure"
    return "exception"


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (bad input and failures keep theirs as it is)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, (ConfigError, WorkerFailure)):
        return text
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def _child_main(parent_pid: int, slot, conn, payload: bytes, fault: Fault | None) -> None:
    """Body of every supervised process: heartbeat first, then fn(*args) from `payload`, then report."""
    global _this
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _this = _ThisProcess(slot, conn, fault)
    threading.Thread(target=_heartbeat, args=(slot,), name="heartbeat", daemon=True).start()
    try:
        fn, args = pickle.loads(payload)  # imports torch and the rest
        fault_point("startup")
        result = fn(*args)
        _this.send(("done", result))
    except BaseException as exc:
        _this.send(("error", _category(exc), one_line(exc), traceback.format_exc()))
        sys.exit(1)


# ---- the supervisor ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """A supervised process that ended before reporting its result, or was silent and was killed."""

    rank: int
    replacement: bool  # a process started to replace a dead one
    pid: int
    how: str  # 'was killed by SIGKILL', 'exited with code 1', 'was silent for 10 s (...) and was killed'
    stage: Stage  # what the process last published
    step_stage: Stage
    step: int
    detected_s: float  # since the supervisor started
    since_fault_s: float | None  # test hook: from the injected fault to this detection

    @property
    def when(self) -> str:
        return describe_stage(self.stage, self.step_stage, self.step)


class Child:
    """One supervised process."""

    def __init__(self, rank: int, proc, slot, conn, replacement: bool, started: float) -> None:
        self.rank = rank
        self.proc = proc
        self.slot = slot
        self.conn = conn
        self.replacement = replacement
        self.last_beat = 0
        self.last_cpu: int | None = None  # CPU time in clock ticks (None: not readable here)
        self.last_change = started  # when the heartbeat or the CPU time last advanced
        self.done = False  # reported its result: its exit is expected
        self.error: tuple | None = None  # ("error", category, one line, traceback), if it reported one
        self.ended = False  # exit seen (or killed) and handled
        self.reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stage(self) -> tuple[Stage, Stage, int]:
        """(stage, stage of the last step begun, that step's index; -1 before any step)."""
        step_stage = Stage(self.slot[_STEP_STAGE]) if self.slot[_STEP_STAGE] else Stage.STARTING
        step = self.slot[_STEP] if self.slot[_STEP_STAGE] else -1
        return Stage(self.slot[_STAGE]), step_stage, step

    def recovering(self) -> set[int]:
        """The ranks this process is replacing (while its stage is RECOVERY)."""
        return {r for r in range(len(self.slot) - _FIELDS) if self.slot[_FIELDS + r]}


Event = tuple[Child, "tuple | Failure"]  # a message from the child, or its failure


class Supervisor:
    """Starts and watches the processes of one run; use as a context manager (the exit kills them all).

    describe_rank(rank) names a rank in failure messages, e.g. 'rank 2 (attention worker 1)'.
    """

    def __init__(
        self,
        world_size: int,
        heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
        describe_rank: Callable[[int], str] | None = None,
    ) -> None:
        self.world_size = world_size
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.describe_rank = describe_rank or (lambda rank: f"rank {rank}")
        self.children: list[Child] = []
        self.failures: list[Failure] = []  # every failure seen, in the order seen
        self._ctx = multiprocessing.get_context("spawn")
        self._inbox: queue.Queue[Event] = queue.Queue()
        self._t0 = time.monotonic()
        self._old_sigterm = None

    # -- lifetime --
    def __enter__(self) -> Supervisor:
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:  # a handler the caller set stays
            self._old_sigterm = signal.signal(signal.SIGTERM, _raise_on_sigterm)
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self.close()
        finally:
            if self._old_sigterm is not None:
                signal.signal(signal.SIGTERM, self._old_sigterm)

    def start(
        self, rank: int, fn: Callable, args: tuple, fault: Fault | None = None, replacement=False
    ) -> Child:
        """Spawns a process running fn(*args) (fn importable by module and name) as `rank`."""
        slot = self._ctx.RawArray("q", _FIELDS + self.world_size)
        reader_end, writer_end = self._ctx.Pipe(duplex=False)
        payload = pickle.dumps((fn, tuple(args)))
        proc = self._ctx.Process(
            target=_child_main,
            args=(os.getpid(), slot, writer_end, payload, fault),
            name=f"{'replacement-' if replacement else ''}rank{rank}",
            daemon=True,
        )
        with _sigint_ignored():  # inherited through exec: Ctrl-C never reaches a starting child
            proc.start()
        writer_end.close()  # the child holds the only writer: its exit ends the reader's reads
        child = Child(rank, proc, slot, reader_end, replacement, time.monotonic())
        child.reader = threading.Thread(
            target=self._read, args=(child,), name=f"read-rank{rank}", daemon=True
        )
        child.reader.start()
        self.children.append(child)
        return child

    def close(self, grace_s: float = 0.0) -> None:
        """Waits up to grace_s for every process to exit, then SIGKILLs and reaps the rest."""
        deadline = time.monotonic() + grace_s
        for child in self.children:
            if child.proc.pid is None:
                continue
            child.proc.join(max(0.0, deadline - time.monotonic()))
            if child.proc.is_alive():
                self.kill(child)
            child.proc.join()
            child.ended = True
        for child in self.children:
            if child.reader is not None:
                child.reader.join(DRAIN_S)
            child.conn.close()

    def kill(self, child: Child) -> None:
        """SIGKILLs the process (stopped ones too) and reaps it; it raises no Failure after this."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
        child.proc.join(KILL_JOIN_S)
        child.ended = True

    # -- watching --
    def current(self, rank: int) -> Child:
        """The latest process started for `rank`."""
        return next(c for c in reversed(self.children) if c.rank == rank)

    def poll(self, timeout_s: float = POLL_S) -> list[Event]:
        """Messages that arrived (waiting up to timeout_s for the first), then the failures seen now
        (also appended to self.failures)."""
        events = self._take(timeout_s)
        now = time.monotonic()
        for child in self.children:
            if child.ended:
                continue
            if not child.proc.is_alive():
                child.reader.join(DRAIN_S)  # what it sent before it ended comes first
                events += self._take(0.0)
                child.proc.join()
                child.ended = True
                if not child.done:
                    events.append((child, self._failure(child, self._exit_text(child))))
                continue
            beat, cpu = child.slot[_BEAT], _cpu_ticks(child.pid)
            if beat != child.last_beat or cpu != child.last_cpu:
                child.last_beat, child.last_cpu, child.last_change = beat, cpu, now
                continue
            limit = self.heartbeat_timeout_s if beat else FIRST_BEAT_TIMEOUT_S
            if now - child.last_change > limit and not child.done:
                self.kill(child)
                how = (
                    f"was silent for {limit:g} s (no heartbeat, no CPU time: stopped or hung) and was killed"
                    if beat
                    else f"did not start within {limit:g} s and was killed"
                )
                events.append((child, self._failure(child, how)))
        self.failures += [e for _, e in events if isinstance(e, Failure)]
        return events

    def watch_for(self, grace_s: float) -> None:
        """Keeps watching for grace_s, dropping messages (the run is ending), so that the failures of
        that time land in self.failures."""
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            self.poll(min(POLL_S, grace_s))

    def describe(self, failure: Failure, when: str | None = None) -> str:
        """One line: who, what happened, when ('rank 2 (attention worker 1) was killed by SIGKILL
        during decode step 3')."""
        who = self.describe_rank(failure.rank)
        if failure.replacement:
            who = f"the replacement for {who}"
        return f"{who} {failure.how} {when or failure.when}"

    # -- internals --
    def _read(self, child: Child) -> None:
        try:
            while True:
                message = pickle.loads(child.conn.recv_bytes())
                self._inbox.put((child, message))
        except (EOFError, OSError):
            return  # the process ended (or close() closed the pipe)
        except Exception as exc:  # a message that cannot be unpickled here
            self._inbox.put((child, ("error", "exception", one_line(exc), traceback.format_exc())))

    def _take(self, timeout_s: float) -> list[Event]:
        events = []
        try:
            events.append(self._inbox.get(timeout=timeout_s) if timeout_s > 0 else self._inbox.get_nowait())
            while True:
                events.append(self._inbox.get_nowait())
        except queue.Empty:
            pass
        for child, message in events:
            if message[0] == "done":
                child.done = True
            elif message[0] == "error":
                child.error = message
        return events

    def _exit_text(self, child: Child) -> str:
        if child.error is not None:
            return f"failed ({child.error[2]})"
        code = child.proc.exitcode
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                return f"was killed by {signal.Signals(-code).name}"
            return f"was killed by signal {-code}"
        return f"exited with code {code} before reporting a result"

    def _failure(self, child: Child, how: str) -> Failure:
        stage, step_stage, step = child.stage()
        now = time.monotonic()
        fault_ns = child.slot[_FAULT_NS]
        return Failure(
            rank=child.rank,
            replacement=child.replacement,
            pid=child.pid,
            how=how,
            stage=stage,
            step_stage=step_stage,
            step=step,
            detected_s=now - self._t0,
            since_fault_s=now - fault_ns / 1e9 if fault_ns else None,
        )


def _cpu_ticks(pid: int) -> int | None:
    """User + system CPU time of a process, in clock ticks (Linux /proc); None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[11]) + int(fields[12])  # utime and stime: fields 14 and 15 of proc(5)


def _raise_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through Supervisor.__exit__, which kills the processes


@contextlib.contextmanager
def _sigint_ignored():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
