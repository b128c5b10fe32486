"""``python -m csae_bench`` is the ``csae-bench`` console script (every command: run,
leaderboard, study, regression, ...); ``python -m csae_bench.run`` is its ``run`` command."""

import sys

from csae_bench.cli import main

sys.exit(main(run_prog="python -m csae_bench"))
