#!/usr/bin/env bash
# Fetches Intel MKL (static libraries, headers) and the Intel OpenMP runtime
# from their official wheels on PyPI into .mkl/, for `--features mkl` builds
# on machines without a system MKL and without other network access.
#
#   scripts/setup-mkl.sh
#   source .mkl/env.sh      # sets MKLROOT, LD_LIBRARY_PATH and an rpath
#   cargo build --release --features mkl
set -euo pipefail
cd "$(dirname "$0")/.."
version="${MKL_VERSION:-2026.2.0}"
dest="$PWD/.mkl"
mkdir -p "$dest/wheels"
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$dest/wheels" \
  "mkl-static==$version" "mkl-include==$version" "intel-openmp==$version"
for w in "$dest"/wheels/*.whl; do
  python3 -m zipfile -e "$w" "$dest/root"
done
# The wheels keep their files under <name>.data/data/{lib,include}.
root="$dest/root"
lib=$(dirname "$(find "$root" -name libmkl_core.a | head -n 1)")
omp=$(dirname "$(find "$root" -name 'libiomp5.so' | head -n 1)")
cat > "$dest/env.sh" <<ENV
export MKLROOT="$root"
export LD_LIBRARY_PATH="$omp\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export RUSTFLAGS="\${RUSTFLAGS:-} -C link-arg=-Wl,-rpath,$omp"
ENV
echo "MKL $version in $root (libraries in $lib, OpenMP runtime in $omp)"
echo "now: source .mkl/env.sh && cargo build --release --features mkl"
