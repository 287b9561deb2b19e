#!/usr/bin/env bash
# Installs a CUDA 13.0 toolkit (nvcc, headers, cudart, cuBLAS, cuRAND, NVRTC,
# CCCL) from NVIDIA's PyPI wheels into .cuda/, for `--features cuda` builds
# on machines without a system CUDA toolkit, a GPU or other network access.
#
#   scripts/setup-cuda.sh
#   source .cuda/env.sh        # PATH (nvcc), CUDA_HOME, CUDA_COMPUTE_CAP
#   cargo build --release --features cuda
#
# Versions: the CUDA 13.0 Update 2 set, as pinned by NVIDIA's own
# `cuda-toolkit==13.0.2` meta-package (cuBLAS and cuRAND have their own
# numbering). Every package is pinned and installed with --no-deps, including
# nvidia-nvvm and nvidia-cuda-crt that nvcc's wheel requires unpinned (pip
# would take 13.5, whose ptxas rejects nvcc 13.0's PTX: "Unsupported .version").
# 13.0 because GPU machines run driver 580 (CUDA 13.0), which cannot load PTX
# from a newer toolkit.
#
# Idempotent: a second run with the same pins only checks a stamp and rewrites
# env.sh. CUDA_COMPUTE_CAP (default 90: H100/H200) goes into env.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
pins=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cuda-cccl==13.0.85
  nvidia-cublas==13.1.0.3
  nvidia-curand==10.4.0.35
)
dest="$PWD/.cuda"
site="$dest/site-packages"
root="$site/nvidia/cu13"
stamp="$dest/installed"

if [[ ! -f "$stamp" || "$(cat "$stamp")" != "${pins[*]}" ]]; then
  rm -rf "$dest"
  mkdir -p "$dest"
  # Into a fresh folder, renamed when complete: an interrupted run leaves
  # nothing that looks installed.
  python3 -m pip install --quiet --disable-pip-version-check --no-cache-dir --root-user-action=ignore --no-deps \
    --only-binary=:all: --target "$dest/site-packages.tmp" "${pins[@]}"
  mv "$dest/site-packages.tmp" "$site"
  printf '%s' "${pins[*]}" > "$stamp"
fi

for d in bin include lib; do
  [[ -d "$root/$d" ]] || { echo "setup-cuda: $root/$d missing" >&2; exit 1; }
done

# Link-time names. candle's cudarc links with -lcuda -lnvrtc -lcurand -lcublas
# -lcublasLt and candle-kernels with -lcudart; the wheels ship only the
# versioned libraries (libcublas.so.13, ...) and no driver. Add the unversioned
# names next to them, as a toolkit installation has, and a link-time stub of
# the driver library in lib/stubs (as the toolkit's lib/stubs/libcuda.so).
for lib in nvrtc curand cublas cublasLt cudart; do
  real=$(cd "$root/lib" && ls "lib$lib.so."* 2>/dev/null | sort -V | head -n 1)
  [[ -n $real ]] || { echo "setup-cuda: lib$lib.so.* not in $root/lib" >&2; exit 1; }
  ln -sfn "$real" "$root/lib/lib$lib.so"
done
# The stub exports every driver function that cuda.h declares (and the
# versioned names it #defines them to); each returns CUDA_ERROR_STUB_LIBRARY,
# like NVIDIA's stub. Its soname is libcuda.so.1, the driver's: the binary
# loads the real driver at run time. scripts/cuda-env.sh puts the stub's
# folder on the library path only where no driver is installed.
stubs="$root/lib/stubs"
if [[ ! -f "$stubs/libcuda.so" ]]; then
  mkdir -p "$stubs"
  h="$root/include/cuda.h"
  {
    grep -ohE 'CUDAAPI[[:space:]]+cu[A-Za-z0-9_]+' "$h" | awk '{print $2}'
    grep -ohE '^#define[[:space:]]+cu[A-Za-z0-9_]+[[:space:]]+cu[A-Za-z0-9_]+' "$h" | awk '{print $2; print $3}'
    grep -ohE '__CUDA_API_PT(DS|SZ)\(cu[A-Za-z0-9_]+\)' "$h" \
      | sed -E 's/__CUDA_API_PTDS\((.*)\)/\1_ptds/; s/__CUDA_API_PTSZ\((.*)\)/\1_ptsz/'
  } | sort -u | awk '{printf "int %s(void) { return 34; /* CUDA_ERROR_STUB_LIBRARY */ }\n", $1}' \
    > "$stubs/libcuda-stub.c"
  cc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so.tmp" "$stubs/libcuda-stub.c"
  mv "$stubs/libcuda.so.tmp" "$stubs/libcuda.so"
  ln -sfn libcuda.so "$stubs/libcuda.so.1"
fi

cap="${CUDA_COMPUTE_CAP:-90}"
cat > "$dest/env.sh" <<ENV
# Written by scripts/setup-cuda.sh. For building with --features cuda.
export PATH="$root/bin\${PATH:+:\$PATH}"
export CUDA_HOME="$root"
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-$cap}"
ENV
echo "CUDA $("$root/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p') in $root"
echo "now: source .cuda/env.sh && cargo build --release --features cuda"
