#!/usr/bin/env bash
# One recipe-search run: fit all-MiniLM-L6-v2 (CLS) on the books with the
# given extra flags, then STS-B dev (and train) at max length 32; appends a
# line to benches/recipes/runs.tsv.
#   benches/recipes/run.sh NAME [fit flags…]
# EMBEDTUNE (default target/release/embedtune), OUT_ROOT (default /tmp/recipes).
set -euo pipefail
cd "$(dirname "$0")/../.."
name=$1; shift
bin=${EMBEDTUNE:-target/release/embedtune}
root=${OUT_ROOT:-/tmp/recipes}
shared=../shared
out=$root/$name
mkdir -p "$root"
"$bin" fit --model $shared/models/all-MiniLM-L6-v2 --data $shared/data/books \
    --out "$out" --overwrite --pooling cls --max-len 32 --eval-every 0 "$@" > "$root/$name.log" 2>&1
sts() {
    "$bin" eval --model "$out" --sts "$shared/data/stsb/$1" --pooling cls --max-len 32 --format json |
        python3 -c 'import json, sys; print("%.2f" % json.load(sys.stdin)["spearman"])'
}
rm -rf "$out/checkpoints"
dev=$(sts sts-dev.csv)
train=${WITH_TRAIN:+$(sts sts-train.csv)}
python3 - "$out/report.json" "$name" "$dev" "${train:-}" "$*" >> benches/recipes/runs.tsv <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
a = r["after"]
print("\t".join([sys.argv[2], f"{a['avg_cosine']:.3f}", f"{a['uniformity']:.2f}", f"{a['alignment']:.3f}",
                 sys.argv[3], sys.argv[4] or "-", f"{r['train_seconds']:.0f}", sys.argv[5]]))
PY
tail -1 benches/recipes/runs.tsv
