"""``python -m csae_bench.corpus``: build the english corpus now (instead of at first use) and
print its composition table."""

import logging
import sys

from csae_bench.corpus.build import composition_table, ensure_built
from csae_bench.errors import BadInputError

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
try:
    path = ensure_built()
except BadInputError as err:
    sys.stderr.write(f"{err}\n")
    sys.exit(2)
sys.stdout.write(f"{path}\n\n{composition_table(path)}")
