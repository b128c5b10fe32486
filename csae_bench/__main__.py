"""``python -m csae_bench`` is ``python -m csae_bench.run``."""

import sys

from csae_bench.run import main

sys.exit(main())
