"""Errors of the reference implementation that describe bad input rather than a bug.

`reference_impl` never imports `lamina_bench`; the harness CLI maps these to exit code 2.
"""


class ConfigError(ValueError):
    """Bad input to the reference implementation: unusable checkpoint, prompt too long, bad options."""
