"""Command line of the homogeneous baseline: serve a prompt file, print one JSON line per request.

    python -m reference_impl.launch --model-dir DIR --prompts FILE.jsonl [--system homogeneous] [--tp 2]

One process serves everything for `--tp 1`; with `--tp N` it spawns N processes (homogeneous.py). The
summary goes to stderr as one JSON line. The Lamina runtime has its own: `python -m reference_impl.lamina`.
"""

from __future__ import annotations

import argparse
import sys

from reference_impl.config import GenerateConfig
from reference_impl.engine import run_summary
from reference_impl.errors import ConfigError
from reference_impl.homogeneous import generate
from reference_impl.options import add_generate_arguments, config_from_args
from reference_impl.prompts import print_completions, read_prompts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reference_impl.launch", description=__doc__.splitlines()[0]
    )
    add_generate_arguments(parser, systems=("homogeneous",))
    args = parser.parse_args(argv)
    try:
        run = generate(config_from_args(GenerateConfig, args), read_prompts(args.prompts))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_completions(run.completions, run_summary(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
