#!/usr/bin/env python3
"""Checks that a model folder saved by `embedtune fit` loads in Python
sentence-transformers and gives the same embeddings as `embedtune embed`.

Usage: .venv-ref/bin/python scripts/reference/check_roundtrip.py MODEL_DIR [--embedtune target/release/embedtune]
Exits non-zero when any coordinate differs by more than --tol (default 1e-4).
"""
import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

from sentence_transformers import SentenceTransformer

SENTENCES = [
    "A man is playing a guitar.",
    "The committee postponed its decision until the next quarterly meeting.",
    "Rain again today?",
    "She folded the letter twice and slipped it under the door before anyone woke.",
    "Compile with optimisations enabled to get representative benchmark numbers.",
    "Whales surface to breathe, then dive for twenty minutes or more.",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--embedtune", default="target/release/embedtune")
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()

    st = SentenceTransformer(args.model, device="cpu")
    ref = st.encode(SENTENCES, convert_to_numpy=True, batch_size=8)

    with tempfile.TemporaryDirectory() as tmp:
        data = pathlib.Path(tmp) / "in.txt"
        out = pathlib.Path(tmp) / "out.jsonl"
        data.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
        subprocess.run([args.embedtune, "embed", "--model", args.model, "--data", str(data),
                        "--out", str(out), "--device", "cpu"], check=True)
        ours = [json.loads(l)["embedding"] for l in out.read_text(encoding="utf-8").splitlines()]

    worst = max(abs(a - b) for r, o in zip(ref, ours) for a, b in zip(r, o))
    print(f"{args.model}: {len(SENTENCES)} sentences, dim {len(ours[0])}, "
          f"modules {[type(m).__name__ for m in st]}, max |diff| {worst:.2e}")
    sys.exit(0 if worst <= args.tol else 1)


if __name__ == "__main__":
    main()
