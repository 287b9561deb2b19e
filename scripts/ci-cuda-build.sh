#!/usr/bin/env bash
# CI: checks that the CUDA build compiles and links (no GPU needed, nothing is
# run on one). Installs the CUDA 13.0 wheels (scripts/setup-cuda.sh), then
# builds the binaries and the device tests with --features cuda in the dev
# profile, which shares the target folder with `cargo test`. Prints how long each step took.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
scripts/setup-cuda.sh
t1=$SECONDS
echo "ci-cuda-build: setup-cuda.sh took $((t1 - t0)) s"
# shellcheck source=/dev/null
source .cuda/env.sh
# The binaries and the device tests (tests/device.rs), built as `cargo test`
# builds them: the same dev-dependency features as the CPU test build just
# before, so only what the `cuda` feature changes is compiled again.
cargo test --locked --features cuda --test device --no-run
t2=$SECONDS
echo "ci-cuda-build: cargo test --features cuda --test device --no-run took $((t2 - t1)) s"
