"""Errors that mean "the user asked for something that cannot be done".

The CLI turns each into one line on stderr and exit code 2 (no traceback). Messages name what was wrong
and what is valid, e.g. "unknown model 'llama-7x'; valid: llama-33b, llama-65b, ...".
"""


class UserInputError(ValueError):
    """Bad input: unknown name, malformed spec, impossible configuration."""
