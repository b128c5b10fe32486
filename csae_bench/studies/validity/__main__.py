import sys

from csae_bench.studies.validity import main

sys.exit(main())
