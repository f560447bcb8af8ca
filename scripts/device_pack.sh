#!/usr/bin/env bash
# Here, before a GPU session: what scripts/device_multi30k.sh needs on the lent machine, in a git-ignored folder
# that the device tool carries (run's carry=[".whl"]):
#   .whl/           wheels for the packages the GPU image lacks, built for its Python 3.12, at the versions installed
#                   here (so the GPU runs the versions CI tests)
# The corpus travels with the working tree (data/multi30k, ~5 MiB). Together ~60 MiB of the 64 MiB a call may carry
# (pyarrow is 52 of them: datasets needs pyarrow >= 24).
set -euo pipefail
cd "$(dirname "$0")/.."
version() { python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
rm -rf .whl
mkdir -p .whl
wheels=()
for package in hydra-core omegaconf datasets dill multiprocess fsspec pyarrow xxhash; do
  wheels+=("$package==$(version $package)")
done
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${wheels[@]}"
# antlr4's runtime (hydra's parser) is published as a source archive only: build its pure-Python wheel here
python -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime==$(version antlr4-python3-runtime)"
du -sh .whl data/multi30k
