#!/usr/bin/env bash
# Prepares what bench/gpu/run.sh needs on a CUDA machine, from this (CPU)
# machine: a stripped release build of kiln-bench in bench/gpu/bin/, and
# wheels of the Python packages a stock PyTorch image lacks in
# bench/gpu/wheels/ (min-dalle and its `emoji`, taming-transformers;
# transformers is usually there, set KILN_BENCH_WHEELS_EXTRA="transformers==X"
# to carry it too).
#
#   bench/gpu/prepare.sh            build + wheels
#   KILN_BENCH_SKIP_BUILD=1 ...     wheels only
#
# Both folders are git-ignored; copy or carry them with bench/ to the GPU
# machine, then run bench/gpu/run.sh there.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
if [ "${KILN_BENCH_SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release -p kiln-bench
  mkdir -p "$here/bin"
  # The build's rpath points at this machine's libtorch; run.sh sets
  # LD_LIBRARY_PATH to the GPU machine's own.
  strip -o "$here/bin/kiln-bench" target/release/kiln-bench
  ls -l "$here/bin/kiln-bench"
fi
py=${KILN_PYTHON:-python3}
mkdir -p "$here/wheels"
# Pure-Python packages, so one wheel fits any Python 3 on x86-64. min-dalle
# and taming-transformers are published as source archives: pip builds
# their wheels here.
"$py" -m pip wheel -q --no-deps -w "$here/wheels" \
  min-dalle==0.4.11 emoji taming-transformers==0.0.1 ${KILN_BENCH_WHEELS_EXTRA:-}
ls -l "$here/wheels"
