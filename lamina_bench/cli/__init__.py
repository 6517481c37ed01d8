"""`lamina-bench` command line: wiring only. Each command parses its options and calls the library.

Every command is registered by an `add_<name>` function of `cli/local.py`, `cli/modeled.py` or
`cli/results.py` (COMMANDS lists them). Errors that mean bad input (`UserInputError`, `ConfigError`)
become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from lamina_bench.cli import local, modeled, results, validate
from lamina_bench.cli.common import Parser
from lamina_bench.errors import UserInputError
from reference_impl.errors import ConfigError

COMMANDS = (
    local.add_generate,
    modeled.add_models,
    modeled.add_hardware,
    modeled.add_simulate,
    modeled.add_capacity,
    modeled.add_search,
    local.add_run,
    local.add_profile,
    validate.add_profile_import,
    results.add_report,
    results.add_compare,
    results.add_baseline,
    results.add_merge,
    local.add_gpu_check,
    validate.add_validate,
)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; `generate`'s options (which import torch) are added only when it is the command."""
    parser = Parser(
        prog="lamina-bench",
        description="Measure, profile and model attention offloading (Lamina) against homogeneous baselines. "
        "Every figure is labelled measured, modeled or derived.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    argv = sys.argv[1:] if argv is None else argv
    for add in COMMANDS:
        if add is local.add_generate:
            add(sub, full=bool(argv) and argv[0] == "generate")
        else:
            add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from reference_impl.errors import WorkerFailure  # a run's process died or hung: exit code 1

    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserInputError, ConfigError) as exc:
        print(f"lamina-bench: error: {exc}", file=sys.stderr)
        return 2
    except WorkerFailure as exc:  # a worker process died or hung; the run stopped every process first
        print(f"lamina-bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: every child process was stopped on the way out; no traceback
        print("lamina-bench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
