#!/usr/bin/env bash
# Reproduces the README table "Beating both baselines": all-MiniLM-L6-v2,
# CLS pooling, max length 32, the books of ../shared/data (1,000 sentences
# held back, seed 42), STS-B dev. Each row is a `whiten` or `fit` run into
# OUT/<row>; a row whose folder has a report.json is not run again.
#   scripts/recipe-table.sh [OUT]   (default /tmp/recipe-table)
# EMBEDTUNE: the binary (default target/release/embedtune); ROWS="whiten384 au64 …" runs
# only those rows (the others are printed when their folder exists).
# Time: training (fit) or the whole run (whiten), on this machine's 2 shared cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${EMBEDTUNE:-target/release/embedtune}
out=${1:-/tmp/recipe-table}
model=../shared/models/all-MiniLM-L6-v2
data=../shared/data/books
dev=../shared/data/stsb/sts-dev.csv
common=(--model "$model" --data "$data" --pooling cls --max-len 32 --eval-sts "$dev")
mkdir -p "$out"

# name | command | what
rows=(
  "whitenall|whiten --method whitening --max-samples 20000|whitening, every direction the data span (381 of 384; 20,000 sentences)"
  "whiten256|whiten --method whitening --dim 256 --max-samples 20000|whitening, K = 256"
  "abtt1|whiten --method abtt --remove 1 --max-samples 20000|ABTT, D = 1"
  "abtt2|whiten --method abtt --remove 2 --max-samples 20000|ABTT, D = 2"
  "abtt3|whiten --method abtt --remove 3 --max-samples 20000|ABTT, D = 3"
  "au64|fit --loss align-uniform --batch-size 64 --steps 100 --eval-every 0|align-uniform, B = 64, 100 steps"
  "au512|fit --loss align-uniform --batch-size 512 --mini-batch 64 --steps 25 --eval-every 0|align-uniform, B = 512 (cached, m = 64), 25 steps"
  "nce64|fit --loss infonce --batch-size 64 --steps 100 --eval-every 0|InfoNCE, B = 64, 100 steps"
  "nce512|fit --loss infonce --batch-size 512 --mini-batch 64 --steps 25 --eval-every 0|InfoNCE, B = 512 (cached, m = 64), 25 steps"
  "guided64|fit --loss infonce --guide mean --batch-size 64 --steps 100 --eval-every 0|InfoNCE + the frozen model's mean-pooling similarities distilled (\`--guide mean\`), B = 64, 100 steps"
  "guided-center|fit --recipe guided-center --eval-every 0|\`--recipe guided-center\` (InfoNCE + the guide, on batch-centred vectors, then the mean removed)"
  "recipe|fit --recipe infonce-center --eval-every 0|\`--recipe infonce-center\` (InfoNCE, then the mean removed)"
  "recipe-whiten|fit --recipe infonce-whiten --eval-every 0|\`--recipe infonce-whiten\` (InfoNCE, then whitening)"
)
want=" ${ROWS:-${rows[*]%%|*}} "

run_row() {
  local name=$1 cmd=$2
  [[ -f $out/$name/report.json ]] && return
  echo "== $name: $bin $cmd" >&2
  # shellcheck disable=SC2086
  "$bin" $cmd "${common[@]}" --out "$out/$name" --overwrite > "$out/$name.log" 2>&1
  rm -rf "$out/$name/checkpoints"
}

echo "| row | avg_cosine | uniformity | alignment | STS-B dev Spearman | time |"
echo "|---|---:|---:|---:|---:|---:|"
base=yes
for row in "${rows[@]}"; do
  IFS='|' read -r name cmd what <<< "$row"
  if [[ $want == *" $name "* ]]; then run_row "$name" "$cmd"; fi
  [[ -f $out/$name/report.json ]] || continue
  python3 - "$out/$name/report.json" "$what" "$base" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
if sys.argv[3] == "yes":
    b, s = r["before"], r["sts_before"]["spearman"]
    print(f"| base model | {b['avg_cosine']:.3f} | {b['uniformity']:.2f} | {b['alignment']:.3f} | {s:.2f} | |")
a, s = r["after"], r["sts_after"]["spearman"]
secs = r.get("train_seconds", r.get("seconds"))
print(f"| {sys.argv[2]} | {a['avg_cosine']:.3f} | {a['uniformity']:.2f} | {a['alignment']:.3f} | {s:.2f} | {secs:.0f} s |")
PY
  base=no
done
