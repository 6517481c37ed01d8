"""What every command shares: the one-line-error parser, and the options the user actually gave."""

from __future__ import annotations

import argparse
import sys


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage + exits 2; keep it to one line
        print(f"lamina-bench: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def given(args: argparse.Namespace, **names: str) -> dict:
    """{parameter: value} for the options the user gave (defaults live in the called function only)."""
    return {param: getattr(args, opt) for param, opt in names.items() if getattr(args, opt) is not None}
