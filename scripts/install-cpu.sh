#!/usr/bin/env bash
# Install csae_bench into the active Python environment on a CPU machine.
#  - torch 2.13.0 (CPU) first: letting pip choose torch freely pulls a multi-GB CUDA build;
#  - constraints-cpu.txt keeps it there while the rest resolves;
#  - the ray extra: CI tests --executor ray on a local Ray cluster;
#  - sae-bench depends on torchvision, whose PyPI build breaks `import transformer_lens` beside
#    CPU torch; nothing here uses it, so it is removed.
# GPU users: `pip install -e .` with your own torch instead.
# The `english` corpus (--corpus english) needs nothing installed here: on first use it fetches
# Debian packages with `apt-get download` + `dpkg-deb -x` (present on Debian/Ubuntu; the package
# lists must be current: `apt-get update`) and one sdist with pip. Tests never fetch it.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -c constraints-cpu.txt -e ".[dev,ray]"
python -m pip uninstall --quiet -y torchvision || true
python -c "import csae_bench, sae_bench, sae_lens, transformer_lens" 
echo "csae_bench installed."
