"""Command line of the homogeneous baseline: serve a prompt file, print one JSON line per request.

    python -m reference_impl.launch --model-dir DIR --prompts FILE.jsonl [--system homogeneous] [--tp 2]

One process serves everything for `--tp 1`; with `--tp N` it spawns N processes (homogeneous.py). The
summary goes to stderr as one JSON line. The Lamina runtime has its own: `python -m reference_impl.lamina`.
Bad input ends with one line on stderr and exit code 2; a tensor-parallel process that died or hung,
with one line and exit code 1.

The imports that load torch are inside main(): spawned processes import this module again (it is
`__main__`), and they start their heartbeat only after that (supervisor.py).
"""

from __future__ import annotations

import argparse
import sys

from reference_impl.errors import ConfigError, WorkerFailure


def main(argv: list[str] | None = None) -> int:
    from reference_impl.config import GenerateConfig
    from reference_impl.engine import run_summary
    from reference_impl.homogeneous import generate
    from reference_impl.options import add_generate_arguments, config_from_args
    from reference_impl.prompts import print_completions, read_prompts

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
    except WorkerFailure as exc:  # a process died or hung: every process is gone already
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; every worker process was stopped", file=sys.stderr)
        return 130
    print_completions(run.completions, run_summary(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
