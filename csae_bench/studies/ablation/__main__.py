import sys

from csae_bench.studies.ablation import main

sys.exit(main())
