"""`python -m lamina_bench.gpucheck OUT_DIR [options]`: see lamina_bench.gpucheck."""

import sys

from lamina_bench.gpucheck.cli import main

sys.exit(main())
