"""Command line of the homogeneous baseline: serve a prompt file, print one JSON line per request.

    python -m reference_impl.launch --model-dir DIR --prompts FILE.jsonl [--system homogeneous] [--tp 2]

One process serves everything for `--tp 1`; with `--tp N` it spawns N processes (homogeneous.py). The
summary goes to stderr as one JSON line. The Lamina runtime has its own: `python -m reference_impl.lamina`.
"""

from __future__ import annotations

import argparse
import sys

from reference_impl.config import SYSTEMS, GenerateConfig
from reference_impl.engine import run_summary
from reference_impl.errors import ConfigError
from reference_impl.homogeneous import generate
from reference_impl.prompts import print_completions, read_prompts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reference_impl.launch", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--prompts", required=True)
    parser.add_argument("--system", default="homogeneous", choices=SYSTEMS)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    args = parser.parse_args(argv)
    try:
        cfg = GenerateConfig(
            model_dir=args.model_dir, system=args.system, tp=args.tp, device=args.device, dtype=args.dtype
        )
        run = generate(cfg, read_prompts(args.prompts))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_completions(run.completions, run_summary(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
