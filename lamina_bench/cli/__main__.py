"""`python -m lamina_bench.cli ...` runs the command line."""

import sys

from lamina_bench.cli import main

sys.exit(main())
