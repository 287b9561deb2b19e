"""Sentences/s of embedtune on Ray Data on this machine: in-process
`Embedder.encode`, then `embedtune.ray.embed` with 1 actor of 1 CPU, 1 actor
of 2 CPUs and 2 actors of 1 CPU, on the same sentences (Arrow blocks already
in the object store, so no read task needs a CPU).
Each configuration is timed from `map_batches` to the materialised result
(actor start and model load included), after a warm-up run.

    .venv-py/bin/python benches/ray_throughput.py --sentences 4000
"""

import argparse
import time
from pathlib import Path

import pyarrow as pa
import ray

import embedtune
import embedtune.ray

REPO = Path(__file__).resolve().parents[1]


def book_sentences(n):
    books = sorted((REPO.parent / "shared" / "data" / "books").glob("*.txt"))
    out = []
    for book in books:
        out += [s for s in book.read_text(encoding="utf-8").splitlines() if s.strip()]
    return out[:n]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=str(REPO.parent / "shared" / "models" / "all-MiniLM-L6-v2"))
    p.add_argument("--sentences", type=int, default=4000)
    p.add_argument("--max-len", type=int, default=128)
    args = p.parse_args()
    texts = book_sentences(args.sentences)
    opts = dict(max_len=args.max_len)

    e = embedtune.Embedder(args.model, **opts)
    e.encode(texts[:256])
    t = time.perf_counter()
    e.encode(texts)
    print(f"in-process Embedder.encode: {len(texts) / (time.perf_counter() - t):.1f} sentences/s")

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    table = pa.table({"id": range(len(texts)), "text": texts})
    blocks = [table.slice(i, 250) for i in range(0, len(texts), 250)]
    for workers, cpus in [(1, 1), (1, 2), (2, 1), (1, 1), (1, 2), (2, 1)]:
        ds = ray.data.from_arrow(blocks)
        ds = embedtune.ray.embed(ds, args.model, workers=workers, cpus_per_worker=cpus,
                                 batch_size=256, **opts)
        t = time.perf_counter()
        n = ds.materialize().count()
        rate = n / (time.perf_counter() - t)
        print(f"ray: {workers} actor(s) x {cpus} CPU: {rate:.1f} sentences/s "
              f"({rate / workers:.1f} per actor)")
    ray.shutdown()


if __name__ == "__main__":
    main()
