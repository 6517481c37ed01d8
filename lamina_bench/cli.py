"""`lamina-bench` command line. Only wiring and formatting live here; each command calls one function.

Every command is registered by an `_add_<name>` function below. Errors that mean bad input
(`UserInputError`, `ConfigError`) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from lamina_bench.errors import UserInputError
from reference_impl.errors import ConfigError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage + exits 2; keep it to one line
        print(f"lamina-bench: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lamina-bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in _COMMANDS:
        add(sub)
    return parser


# ---- commands (each: _add_X registers the parser and sets func) ----------------------------------

_COMMANDS: list = []


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserInputError, ConfigError) as exc:
        print(f"lamina-bench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
