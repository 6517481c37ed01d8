"""The GPU check: every GPU measurement of lamina-bench in one call, for anyone with a GPU.

    python -m lamina_bench.gpucheck OUT_DIR [--quick] [--steps a,b] [--device cuda|cpu]
                                            [--budget-s S] [--step-timeout-s S]
    lamina-bench gpu-check OUT_DIR [...]      # the same

Runs from a checkout without installing the package, and never imports plotly or lamina_bench.report.
The steps, in order (each time-boxed and failure-isolated: a step that raises or outlives its box is
recorded as failed and the next one runs):

1. pytest_gpu        `pytest -m gpu` over the test files that use the gpu marker (pytest_step.py)
2. copy_bandwidth    device-to-device copy: bytes read + written / median time
3. gemm              n x n x n bf16 matmul: 2 n^3 / median time
4. decode_check      the Triton paged decode kernel against the fp32 torch reference, 70B attention shape
5. decode_bandwidth  that kernel's KV bytes / median time at a few (batch, context) points
6. profile           operator profile of 70B-shaped layers -> OUT_DIR/<device>-<backend>.json
7. sweep_point       one measured sweep point with telemetry -> OUT_DIR/run.tar.gz

Every number in OUT_DIR/summary.json carries its unit and its source, measured or derived; the summary
is rewritten after every step. Without CUDA every step runs on the CPU at tiny sizes (the kernel in
Triton's interpreter) and the kernel bandwidth is skipped with the reason.

Modules: sizes (step names, sizes per device and mode, the byte and FLOP arithmetic), settings (the
options, checked), records (what a step gets and returns), steps and pytest_step (the seven steps),
runner (time boxes, the watchdog, the run), summary (environment and summary.json), cli (the options).
Only cli, settings and sizes load at import, so `lamina-bench gpu-check --help` stays instant; torch and
the steps load inside `run_from_args`.
"""

from lamina_bench.gpucheck.cli import add_arguments, main, run_from_args

__all__ = ["add_arguments", "main", "run_from_args"]
