"""`lamina-bench` command line. Only wiring and formatting live here; each command calls one function.

Every command is registered by an `_add_<name>` function below. Errors that mean bad input
(`UserInputError`, `ConfigError`) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
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


def _add_generate(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="serve a prompt file with the reference implementation (measured on this machine)",
        description="Serve prompts with the reference implementation. Input: JSONL lines "
        '{"prompt_ids": [...], "max_new_tokens": N}. Greedy unless --temperature is given.',
    )
    p.add_argument(
        "--model-dir", required=True, help="Hugging Face checkpoint folder (config.json + safetensors)"
    )
    p.add_argument("--prompts", required=True, help="JSONL prompt file")
    p.add_argument("--system", default="homogeneous", help="homogeneous (baseline)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel processes for the dense part")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--dtype", default="fp32", help="fp32 | fp16 | bf16")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ignore-eos", action="store_true", help="always generate max_new_tokens")
    p.add_argument("--block-size", type=int, default=16, help="KV cache block size in tokens")
    p.add_argument(
        "--num-blocks", type=int, help="KV cache blocks (default: enough for all requests at once)"
    )
    p.add_argument("--max-batch-size", type=int, help="cap on running requests")
    p.add_argument("--attention-backend", default="auto", help="auto | torch | triton")
    p.add_argument(
        "--json", action="store_true", help="JSONL: one line per request in input order, then a summary line"
    )
    p.set_defaults(func=_run_generate)


def _run_generate(args) -> int:
    from reference_impl.launch import GenerateConfig, generate, read_prompts, run_summary

    cfg = GenerateConfig(
        model_dir=args.model_dir,
        system=args.system,
        tp=args.tp,
        device=args.device,
        dtype=args.dtype,
        block_size=args.block_size,
        num_blocks=args.num_blocks,
        max_batch_size=args.max_batch_size,
        temperature=args.temperature,
        seed=args.seed,
        ignore_eos=args.ignore_eos,
        attention_backend=args.attention_backend,
    )
    run = generate(cfg, read_prompts(args.prompts))
    summary = run_summary(run)
    if args.json:
        for c in run.completions:
            print(json.dumps({"prompt_ids": list(c.prompt_ids), "output_ids": list(c.output_ids)}))
        print(json.dumps({"summary": summary}))
        return 0
    for c in run.completions:
        print(
            f"request {c.request_id}: {len(c.prompt_ids)} prompt -> {len(c.output_ids)} new ({c.finish_reason}): {list(c.output_ids)}"
        )
    print(
        f"{summary['requests']} requests, {summary['generated_tokens']} tokens in {summary['wall_s']:.2f} s; "
        f"decode {summary['decode_tok_per_s']:.1f} tok/s (measured), mean decode batch {summary['mean_decode_batch']}"
    )
    return 0


_COMMANDS: list = [_add_generate]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserInputError, ConfigError) as exc:
        print(f"lamina-bench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
