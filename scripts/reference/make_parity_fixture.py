#!/usr/bin/env python3
"""Writes tests/fixtures/minilm_parity.json: embeddings of a few dozen STS-B
dev sentences computed by the reference implementation (PyTorch +
transformers), which tests/parity.rs compares embedtune against: mean
pooling normalised, CLS raw, and on a subset raw (unnormalised) mean, max
and first-last-avg, where a wrong scale would show.

first-last-avg follows SimCSE's evaluation (evaluation.py): the masked
mean of (hidden_states[1] + hidden_states[-1]) / 2, where hidden_states[0]
is the embedding output, so [1] is the first transformer layer's output.
(SimCSE's training Pooler in models.py uses hidden_states[0] instead.)

Setup (once): python3 -m venv .venv-ref && .venv-ref/bin/pip install -r scripts/reference/requirements.txt
Run:          .venv-ref/bin/python scripts/reference/make_parity_fixture.py
"""
import argparse
import csv
import json
import pathlib

import torch
from transformers import AutoModel, AutoTokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "../shared/models/all-MiniLM-L6-v2"))
    ap.add_argument("--sts", default=str(ROOT / "../shared/data/stsb/sts-dev.csv"))
    ap.add_argument("--out", default=str(ROOT / "tests/fixtures/minilm_parity.json"))
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--n-pooled", type=int, default=10,
                    help="sentences (plus the two long ones) for the raw mean/max/first-last-avg rows")
    args = ap.parse_args()

    sentences = []
    with open(args.sts, encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            for s in row[5:7]:
                if s not in sentences:
                    sentences.append(s)
            if len(sentences) >= args.n - 2:
                break
    # Two long inputs so truncation at max_len is exercised too.
    sentences.append(" ".join(sentences[:12]))
    sentences.append(" ".join(reversed(sentences[:14])))

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModel.from_pretrained(args.model, dtype=torch.float32).eval()
    enc = tok(sentences, padding=True, truncation=True, max_length=args.max_len, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    hidden = out.last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()

    def masked_mean(h):
        return (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    mean_raw = masked_mean(hidden)
    mean = torch.nn.functional.normalize(mean_raw, p=2, dim=1)
    cls = hidden[:, 0]
    # sentence-transformers' max pooling: padding set to -1e9 first.
    max_raw = hidden.masked_fill(mask == 0, -1e9).max(1).values
    first_last = masked_mean((out.hidden_states[1] + out.hidden_states[-1]) / 2.0)
    pooled = list(range(args.n_pooled)) + [len(sentences) - 2, len(sentences) - 1]

    def rows(t):
        return [[float(f"{v:.8g}") for v in r] for r in t.tolist()]

    out = {
        "reference": f"transformers {__import__('transformers').__version__}, torch {torch.__version__}",
        "model": "all-MiniLM-L6-v2",
        "max_len": args.max_len,
        "sentences": sentences,
        "token_counts": enc["attention_mask"].sum(1).tolist(),
        "mean_normalized": rows(mean),
        "cls_raw": rows(cls),
        "pooled_rows": pooled,
        "mean_raw": rows(mean_raw[pooled]),
        "max_raw": rows(max_raw[pooled]),
        "first_last_avg_raw": rows(first_last[pooled]),
    }
    pathlib.Path(args.out).write_text(json.dumps(out) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {len(sentences)} sentences")


if __name__ == "__main__":
    main()
