#!/usr/bin/env bash
# Run-time library path for an embedtune built with --features cuda.
#
#   scripts/cuda-env.sh target/release/embedtune embed --device cuda ...   # runs it
#   eval "$(scripts/cuda-env.sh)"                                           # or sets LD_LIBRARY_PATH here
#
# Such a binary is dynamically linked (candle's choice) against libcuda.so.1
# (the NVIDIA driver), libcudart.so.13, libcublas.so.13, libcublasLt.so.13,
# libcurand.so.10 and libnvrtc.so.13, and the loader must find all of them
# before main() runs. The driver's libcuda.so.1 is normally in the system
# library path. The others come, in this order, from:
#   1. this checkout's .cuda/ (scripts/setup-cuda.sh: the CUDA 13.0 wheels),
#   2. the `nvidia` packages of `python3` (nvidia/cu13/lib, nvidia/*/lib of
#      the pip wheels nvidia-cuda-runtime, nvidia-cublas, ...),
# each folder only if it exists, ahead of any LD_LIBRARY_PATH already set.
# Where no driver is installed (no libcuda.so.1 known to ldconfig or in
# LD_LIBRARY_PATH), the link-time stub from .cuda/ is added last, so the binary starts (--help, CPU
# work); --device cuda then fails with CUDA_ERROR_STUB_LIBRARY.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dirs=()
add() {
  [[ -d "$1" ]] || return 0
  local d
  for d in "${dirs[@]}"; do [[ $d -ef $1 ]] && return 0; done
  dirs+=("$1")
}

add "$repo/.cuda/site-packages/nvidia/cu13/lib"
if command -v python3 >/dev/null; then
  while IFS= read -r d; do add "$d"; done < <(python3 - <<'PY' 2>/dev/null || true
import glob, os
try:
    import nvidia
except ImportError:
    raise SystemExit
for base in nvidia.__path__:
    for lib in sorted(glob.glob(os.path.join(base, "*", "lib"))):
        print(lib)
PY
  )
fi
path="$(IFS=:; echo "${dirs[*]}")"
path="$path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

have_driver=false
if /sbin/ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
  have_driver=true
else
  IFS=: read -ra ld <<< "${LD_LIBRARY_PATH:-}"
  for d in "${ld[@]}"; do [[ -n $d && -e "$d/libcuda.so.1" ]] && have_driver=true; done
fi
stubs="$repo/.cuda/site-packages/nvidia/cu13/lib/stubs"
if ! $have_driver && [[ -e "$stubs/libcuda.so.1" ]]; then
  path="$path:$stubs"
fi
if [[ $# -eq 0 ]]; then
  printf 'export LD_LIBRARY_PATH=%q\n' "$path"
else
  LD_LIBRARY_PATH="$path" exec "$@"
fi
