"""Errors of the reference implementation that end a run with a message rather than a traceback.

`reference_impl` never imports `lamina_bench`; the harness CLI maps `ConfigError` (bad input) to exit
code 2 and `WorkerFailure` (a process of the run died or hung) to exit code 1.
"""


class ConfigError(ValueError):
    """Bad input to the reference implementation: unusable checkpoint, prompt too long, bad options."""


class WorkerFailure(RuntimeError):
    """A process of a run died or hung and the run could not go on without it.

    The message is one line: which rank and role, what happened (died with a signal or an exit code,
    or silent for the heartbeat timeout), and when (start-up, prefill or decode step N, recovery,
    shutdown). `failure` is the supervisor's record of it (supervisor.Failure), when it saw one.
    """

    def __init__(self, message: str, failure=None) -> None:
        super().__init__(message)
        self.failure = failure
