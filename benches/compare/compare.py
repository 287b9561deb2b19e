#!/usr/bin/env python3
"""Side by side: PyTorch + transformers against embedtune on the same model,
sentences, batch size (64) and max length (32), in alternation, medians of
several rounds. A benchmark, not a test: CI does not run it.

Setup (once):
  python3 -m venv .venv-ref && .venv-ref/bin/pip install -r scripts/reference/requirements.txt
  cargo build --release --example throughput            # or --features mkl, see README
Run:
  .venv-ref/bin/python benches/compare/compare.py [--model DIR] [--data FILE] [--rounds 3]
  .venv-ref/bin/python benches/compare/compare.py --family roberta --family mpnet ...   # or --family all

--family NAME measures a base-size model of that family with random weights
(transformers' default config for it, e.g. 768 hidden, 12 layers for
RoBERTa), made once under target/bench-models/NAME with the tokenizer of
the family's test fixture (tests/fixtures/families/NAME); the FLOP table is
skipped for those.

PyTorch runs with as many threads as embedtune (torch.set_num_threads).
"""
import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]


def torch_worker(args):
    """Runs one PyTorch measurement in this process and prints JSON."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    texts = [l.strip() for l in open(args.data, encoding="utf-8") if l.strip()]
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModel.from_pretrained(args.model, dtype=torch.float32)

    def batches(ts):
        for i in range(0, len(ts), 64):
            yield tok(ts[i:i + 64], padding=True, truncation=True, max_length=32, return_tensors="pt")

    if args.mode == "embed":
        model.eval()
        texts = texts[: args.n]
        with torch.no_grad():
            model(**next(batches(texts[:64])))
            start = time.perf_counter()
            for b in batches(texts):
                model(**b).last_hidden_state[:, 0]
            seconds = time.perf_counter() - start
        n = len(texts)
    else:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)

        def step(batch_texts):
            b = tok(batch_texts + batch_texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
            z = torch.nn.functional.normalize(model(**b).last_hidden_state[:, 0], dim=-1)
            x, y = z[:64], z[64:]
            align = (x - y).norm(dim=1).pow(2).mean()
            unif = lambda v: torch.pdist(v, p=2).pow(2).mul(-2).exp().mean().log()
            loss = align + (unif(x) + unif(y)) / 2
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        step(texts[:64])
        start = time.perf_counter()
        for s in range(args.n):
            i = (s + 1) * 64 % (len(texts) - 64)
            step(texts[i:i + 64])
        seconds = time.perf_counter() - start
        n = args.n * 64
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"impl": "pytorch", "mode": args.mode, "sentences": n, "seconds": seconds,
                      "sentences_per_s": n / seconds, "peak_rss_mib": peak}))


def torch_matmul_peak(threads):
    """GFLOP/s of the same FFN-shaped product the embedtune side measures."""
    import torch
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 384), torch.randn(384, 1536)
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        best = max(best, 2 * 2048 * 384 * 1536 / ((time.perf_counter() - start) / 10) / 1e9)
    return best


def matmul_flops(args):
    """Matrix-product FLOPs each side executes: PyTorch on every padded
    token, embedtune on real tokens only (it drops padding). A training step
    is one forward over both views plus a backward of twice its cost."""
    from transformers import AutoConfig, AutoTokenizer
    cfg = AutoConfig.from_pretrained(args.model)
    tok = AutoTokenizer.from_pretrained(args.model)
    h, inter, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    texts = [l.strip() for l in open(args.data, encoding="utf-8") if l.strip()]

    def seq(n):  # forward of one sequence of n tokens: projections, FFN, attention
        return (2 * (4 * h * h + 2 * h * inter) * n + 4 * n * n * h) * layers

    def lengths(ts):
        return [len(ids) for ids in tok(ts, truncation=True, max_length=32)["input_ids"]]

    embed = lengths(texts[: args.embed_sentences])
    flops = {
        ("embed", "pytorch"): sum(len(b) * seq(max(b)) for b in
                                  (embed[i:i + 64] for i in range(0, len(embed), 64))),
        ("embed", "embedtune"): sum(seq(n) for n in embed),
        ("train", "pytorch"): 0,
        ("train", "embedtune"): 0,
    }
    for s in range(args.train_steps):
        i = (s + 1) * 64 % (len(texts) - 64)
        b = lengths(texts[i:i + 64])
        flops[("train", "pytorch")] += 3 * 128 * seq(max(b))
        flops[("train", "embedtune")] += 3 * 2 * sum(seq(n) for n in b)
    return flops


FAMILY_CONFIGS = {
    "roberta": ("RobertaConfig", {"vocab_size": 50265, "max_position_embeddings": 514, "type_vocab_size": 1,
                                  "pad_token_id": 1}),
    "xlm-roberta": ("XLMRobertaConfig", {"vocab_size": 250002, "max_position_embeddings": 514,
                                         "type_vocab_size": 1, "pad_token_id": 1}),
    "distilbert": ("DistilBertConfig", {}),
    "mpnet": ("MPNetConfig", {"max_position_embeddings": 514}),
    "modernbert": ("ModernBertConfig", {"pad_token_id": 0}),
}


def family_model(name):
    """A base-size random model of `name` (made once), in a folder both sides load."""
    import torch
    import transformers
    out = ROOT / "target/bench-models" / name
    if (out / "model.safetensors").exists():
        return out
    fixture = ROOT / "tests/fixtures/families" / name
    cls, overrides = FAMILY_CONFIGS[name]
    torch.manual_seed(0)
    cfg = getattr(transformers, cls)(**overrides)
    model = transformers.AutoModel.from_config(cfg)
    model.save_pretrained(out)
    transformers.AutoTokenizer.from_pretrained(fixture).save_pretrained(out)
    return out


def run(cmd, env=None):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "../shared/models/all-MiniLM-L6-v2"))
    ap.add_argument("--data", default=str(ROOT / "../shared/data/books/melville-moby_dick.txt"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--embed-sentences", type=int, default=1024)
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--embedtune", default=str(ROOT / "target/release/examples/throughput"))
    ap.add_argument("--family", action="append", choices=[*FAMILY_CONFIGS, "all"],
                    help="measure a base-size random model of this family (repeatable)")
    ap.add_argument("--worker", choices=["embed", "train"])
    ap.add_argument("--n", type=int)
    ap.add_argument("--mode")
    args = ap.parse_args()
    if args.worker:
        args.mode = args.worker
        return torch_worker(args)
    if args.family:
        names = list(FAMILY_CONFIGS) if "all" in args.family else args.family
        rows = []
        for name in names:
            args.model = str(family_model(name))
            print(f"== {name} ({args.model})", flush=True)
            rows.append((name, measure(args)))
        print("\n| family | workload | PyTorch sent/s | embedtune sent/s | ratio |")
        print("|---|---|---:|---:|---:|")
        for name, results in rows:
            for mode in ["embed", "train"]:
                med = {i: statistics.median(r["sentences_per_s"] for r in results[(mode, i)])
                       for i in ["pytorch", "embedtune"]}
                print(f"| {name} | {mode} | {med['pytorch']:.1f} | {med['embedtune']:.1f} "
                      f"| {med['embedtune'] / med['pytorch']:.2f}× |")
        return
    results = measure(args)
    report(args, results)


def measure(args):
    """Both sides on each workload, alternating, `args.rounds` times."""
    results = {}
    for mode, n in [("embed", args.embed_sentences), ("train", args.train_steps)]:
        for r in range(args.rounds):
            # Alternate which side goes first, so drift hits both alike.
            order = ["embedtune", "pytorch"] if r % 2 == 0 else ["pytorch", "embedtune"]
            for impl in order:
                if impl == "pytorch":
                    res = run([sys.executable, __file__, "--worker", mode, "--n", str(n), "--model", args.model,
                               "--data", args.data, "--threads", str(args.threads)])
                else:
                    res = run([args.embedtune, args.model, args.data, mode, str(n)],
                              env={**os.environ, "RAYON_NUM_THREADS": str(args.threads)})
                results.setdefault((mode, impl), []).append(res)
                print(f"{mode:5} {impl:9} round {r + 1}: {res['sentences_per_s']:7.1f} sentences/s, "
                      f"peak {res['peak_rss_mib']:.0f} MiB", flush=True)
    return results


def report(args, results):
    """The throughput table, and the FLOP rates against each side's peak."""
    flops = matmul_flops(args)
    peak = {"pytorch": torch_matmul_peak(args.threads),
            "embedtune": run([args.embedtune, "matmul"])["matmul_gflops"]}
    print("\n| workload | PyTorch sent/s | embedtune sent/s | ratio | PyTorch peak MiB | embedtune peak MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode in ["embed", "train"]:
        med = {i: statistics.median(r["sentences_per_s"] for r in results[(mode, i)]) for i in ["pytorch", "embedtune"]}
        mem = {i: max(r["peak_rss_mib"] for r in results[(mode, i)]) for i in ["pytorch", "embedtune"]}
        print(f"| {mode} | {med['pytorch']:.1f} | {med['embedtune']:.1f} | {med['embedtune'] / med['pytorch']:.2f}× "
              f"| {mem['pytorch']:.0f} | {mem['embedtune']:.0f} |")
    print("\nMatrix products executed (forward + backward for train) per second, against each side's")
    print(f"matmul peak on a 2048×384·384×1536 product (PyTorch {peak['pytorch']:.0f}, "
          f"embedtune {peak['embedtune']:.0f} GFLOP/s):\n")
    print("| workload | side | GFLOP per run | GFLOP/s | % of peak |")
    print("|---|---|---:|---:|---:|")
    for mode in ["embed", "train"]:
        for impl in ["pytorch", "embedtune"]:
            secs = statistics.median(r["seconds"] for r in results[(mode, impl)])
            rate = flops[(mode, impl)] / secs / 1e9
            print(f"| {mode} | {impl} | {flops[(mode, impl)] / 1e9:.0f} | {rate:.0f} | {100 * rate / peak[impl]:.0f}% |")


if __name__ == "__main__":
    main()

