#!/usr/bin/env bash
# The one-shot device check: parity with PyTorch, the device tests, a short
# fit and side-by-side throughput, written as one JSON file.
#
# Built here, run there (a GPU machine with no Rust toolchain and no model
# files, only this tree of at most 64 MiB):
#
#   scripts/gpu-check.sh prepare [--device cuda|cpu]
#       builds the release binaries (with --features cuda for cuda; needs
#       scripts/setup-cuda.sh first) and the device-test binary, stripped,
#       into target/gpu-check/pack.tar.xz (git-ignored: carry it)
#   scripts/gpu-check.sh run [--device cuda|cpu] [--out FILE]
#       unpacks the binaries, finds the CUDA libraries (scripts/cuda-env.sh),
#       runs scripts/gpu_check.py with python3 (torch + transformers) or
#       $PYTHON; default FILE: $OUT/gpu-check.json when $OUT is set, else
#       target/gpu-check/gpu-check.json
#
# `--device cpu` runs the same path on the CPU with a small model, so the
# GPU run is not the script's first.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-}
shift || true
device=cuda
out=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --device) device=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "gpu-check: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ $device == cuda || $device == cpu ]] || { echo "gpu-check: --device cuda or cpu" >&2; exit 2; }
dir=target/gpu-check
pack=$dir/pack.tar.xz

prepare() {
  local features=()
  if [[ $device == cuda ]]; then
    [[ -f .cuda/env.sh ]] || { echo "gpu-check: run scripts/setup-cuda.sh first" >&2; exit 1; }
    # shellcheck source=/dev/null
    source .cuda/env.sh
    features=(--features cuda)
  fi
  cargo build --release --locked "${features[@]}" --bins --example throughput
  local tests
  tests=$(cargo test --release --locked "${features[@]}" --test device --no-run --message-format=json |
    python3 -c 'import json, sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "device" and m.get("executable"):
        print(m["executable"])')
  rm -rf "$dir/bin"
  mkdir -p "$dir/bin"
  local tgt=${CARGO_TARGET_DIR:-target}
  cp "$tgt/release/embedtune" "$tgt/release/examples/throughput" "$dir/bin/"
  cp "$tests" "$dir/bin/device-tests"
  strip "$dir/bin/"*
  python3 - "$dir/bin" "$pack" <<'PY'
import pathlib, sys, tarfile
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
tmp = dst.with_suffix(".tmp")
with tarfile.open(tmp, "w:xz", preset=6) as t:
    for f in sorted(src.iterdir()):
        t.add(f, arcname=f.name)
tmp.rename(dst)
mib = dst.stat().st_size / 2**20
print(f"gpu-check: {dst} {mib:.1f} MiB", file=sys.stderr)
if mib > 56:
    sys.exit("gpu-check: the pack leaves too little of the 64 MiB the tree may carry")
PY
}

run() {
  [[ -f $pack ]] || { echo "gpu-check: no $pack (run: scripts/gpu-check.sh prepare --device $device)" >&2; exit 1; }
  local bin=$dir/run-bin
  rm -rf "$bin"
  mkdir -p "$bin"
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$pack" "$bin"
  if [[ $device == cuda ]]; then
    eval "$(scripts/cuda-env.sh)"
  fi
  local file=${out:-${OUT:+$OUT/gpu-check.json}}
  file=${file:-$dir/gpu-check.json}
  "${PYTHON:-python3}" scripts/gpu_check.py --device "$device" --bin "$bin" --work "$dir/work" --out "$file"
  cat "$file"
}

case $what in
  prepare) prepare ;;
  run) run ;;
  *) echo "usage: scripts/gpu-check.sh prepare|run [--device cuda|cpu] [--out FILE]" >&2; exit 2 ;;
esac
