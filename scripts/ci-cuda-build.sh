#!/usr/bin/env bash
# CI: checks that the CUDA build compiles and links (no GPU needed, nothing is
# run on one). Installs the CUDA 13.0 wheels (scripts/setup-cuda.sh), then
# builds the binaries with --features cuda in the dev profile, which shares
# the target folder with `cargo test`. Prints how long each step took.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
scripts/setup-cuda.sh
t1=$SECONDS
echo "ci-cuda-build: setup-cuda.sh took $((t1 - t0)) s"
# shellcheck source=/dev/null
source .cuda/env.sh
cargo build --locked --features cuda --bins
t2=$SECONDS
echo "ci-cuda-build: cargo build --features cuda --bins took $((t2 - t1)) s"
