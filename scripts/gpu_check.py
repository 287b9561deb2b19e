#!/usr/bin/env python3
"""The one-shot device check (scripts/gpu-check.sh runs it): embedtune
against PyTorch + transformers on the same random model, device, batch (64)
and max length (32). Writes one JSON file:

- parity: embedtune `embed` vs transformers at f32, CLS and mean pooling
  (raw vectors): max |diff| and min cosine;
- device_tests: the result of tests/device.rs run on the device;
- fit, fit_bf16: a short `embedtune fit` (align + uniform, two dropout
  views, AdamW) at f32 and at bf16 (mixed precision, f32 master weights):
  loss finite and falling, sentences/s;
- throughput: embed and fit sentences/s of both sides, f32 and bf16 (PyTorch:
  autocast), peak device memory, and the fraction of the device's bf16
  matrix-product peak each side reaches;
- graph_split: embedtune's bf16 fit sentences/s on sentences of mixed
  length at max length 128, a step's rows in one padded pass, split as the
  device's default says, and split into up to 4 passes whatever they cost:
  to check the per-pass cost estimate of src/training/forward.rs.

Needs torch and transformers (the GPU machines have them; here,
.venv-ref). The model is made here from a config (a BERT of bert-base-uncased
shape on CUDA, a small one on the CPU) with random weights and a WordPiece
tokenizer built from the DistilBERT test fixture's vocabulary.
"""
import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
# H100/H200 SXM dense bf16 tensor-core peak (NVIDIA's data sheet), FLOP/s.
H200_BF16_PEAK = 989.4e12
BATCH, MAX_LEN = 64, 32

SIZES = {
    # model, sentences for parity/embed, fit steps, throughput rounds
    "cuda": dict(hidden=768, layers=12, heads=12, inter=3072, embed_n=8192, fit_steps=30,
                 train_steps=20, rounds=3),
    "cpu": dict(hidden=128, layers=2, heads=4, inter=512, embed_n=512, fit_steps=8,
                train_steps=3, rounds=2),
}


def log(*a):
    print("gpu-check:", *a, file=sys.stderr, flush=True)


def texts(n):
    lines = [l.strip() for l in open(ROOT / "data/probe_sentences.txt", encoding="utf-8") if l.strip()]
    return [lines[i % len(lines)] for i in range(n)]


def make_model(out, size):
    """A random BERT from a config, with a full-size WordPiece vocabulary."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast
    out.mkdir(parents=True, exist_ok=True)
    vocab = json.load(open(ROOT / "tests/fixtures/families/distilbert/tokenizer.json"))["model"]["vocab"]
    words = [w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    words += [f"[unused{i}]" for i in range(30522 - len(words))]
    (out / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab_file=str(out / "vocab.txt"), do_lower_case=True).save_pretrained(out)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(words), hidden_size=size["hidden"], num_hidden_layers=size["layers"],
                     num_attention_heads=size["heads"], intermediate_size=size["inter"])
    BertModel(cfg).save_pretrained(out)
    return out


class PeakMemory:
    """Peak device memory of a child process: nvidia-smi polled (CUDA) or
    the process's peak RSS from /proc (CPU)."""

    def __init__(self, device):
        self.device, self.peak, self.stop = device, 0.0, threading.Event()

    def run(self, cmd, env):
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        t = threading.Thread(target=self._poll, args=(p.pid,), daemon=True)
        t.start()
        out, err = p.communicate()
        self.stop.set()
        t.join()
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, cmd))} failed: {err.strip().splitlines()[-1:]}")
        return out, err

    def _poll(self, pid):
        while not self.stop.wait(0.2):
            try:
                if self.device == "cuda":
                    q = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                                        "--format=csv,noheader,nounits"], capture_output=True, text=True)
                    for line in q.stdout.splitlines():
                        p, mib = [x.strip() for x in line.split(",")]
                        if int(p) == pid:
                            self.peak = max(self.peak, float(mib))
                else:
                    status = open(f"/proc/{pid}/status").read()
                    kib = float(re.search(r"VmHWM:\s+(\d+)", status).group(1))
                    self.peak = max(self.peak, kib / 1024)
            except Exception:
                pass


def torch_side(model_dir, device, dtype, mode, ts, steps):
    """PyTorch sentences/s, peak memory and useful FLOPs for embed or fit."""
    import torch
    from transformers import AutoModel, AutoTokenizer
    dev = torch.device("cuda" if device == "cuda" else "cpu")
    tdtype = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).to(dev)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def enc(batch):
        return tok(batch, padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt").to(dev)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dtype == "bf16")
    if mode == "embed":
        model.eval()
        with torch.no_grad(), autocast:
            model(**enc(ts[:BATCH]))
            sync()
            start = time.perf_counter()
            for i in range(0, len(ts), BATCH):
                model(**enc(ts[i:i + BATCH])).last_hidden_state[:, 0].float().cpu()
            sync()
        seconds, n = time.perf_counter() - start, len(ts)
    else:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)

        def step(batch):
            with autocast:
                z = model(**enc(batch + batch)).last_hidden_state[:, 0]
            z = torch.nn.functional.normalize(z.float(), dim=-1)
            x, y = z[:BATCH], z[BATCH:]
            unif = lambda v: torch.pdist(v, p=2).pow(2).mul(-2).exp().mean().log()
            loss = (x - y).norm(dim=1).pow(2).mean() + (unif(x) + unif(y)) / 2
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            return loss.item()

        step(ts[:BATCH])
        sync()
        start = time.perf_counter()
        for s in range(steps):
            i = (s + 1) * BATCH % (len(ts) - BATCH)
            step(ts[i:i + BATCH])
        sync()
        seconds, n = time.perf_counter() - start, steps * BATCH
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"sentences_per_s": n / seconds, "seconds": seconds, "peak_memory_mib": peak}


def useful_flops_per_sentence(model_dir, ts, size):
    """Matrix-product FLOPs of one forward over the real tokens of a
    sentence, averaged over `ts`."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    h, inter, layers = size["hidden"], size["inter"], size["layers"]
    lengths = [len(x) for x in tok(ts[:2048], truncation=True, max_length=MAX_LEN)["input_ids"]]
    per = [(2 * (4 * h * h + 2 * h * inter) * n + 4 * n * n * h) * layers for n in lengths]
    return statistics.mean(per)


def embedtune_side(bin_dir, model_dir, device, dtype, mode, data, amount, extra_env=None):
    env = dict(os.environ, EMBEDTUNE_DEVICE=device, EMBEDTUNE_DTYPE=dtype, HF_HUB_OFFLINE="1", **(extra_env or {}))
    mem = PeakMemory(device)
    out, _ = mem.run([str(bin_dir / "throughput"), str(model_dir), str(data), mode, str(amount)], env)
    r = json.loads(out.strip().splitlines()[-1])
    return {"sentences_per_s": r["sentences_per_s"], "seconds": r["seconds"], "peak_memory_mib": mem.peak}


def parity(bin_dir, model_dir, device, work, ts):
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer
    dev = torch.device("cuda" if device == "cuda" else "cpu")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).to(dev).eval()
    cls, mean = [], []
    with torch.no_grad():
        for i in range(0, len(ts), BATCH):
            b = tok(ts[i:i + BATCH], padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt").to(dev)
            hs = model(**b).last_hidden_state
            m = b["attention_mask"].unsqueeze(-1).float()
            cls.append(hs[:, 0].cpu().numpy())
            mean.append(((hs * m).sum(1) / m.sum(1)).cpu().numpy())
    ref = {"cls": np.concatenate(cls), "mean": np.concatenate(mean)}
    data = work / "parity.txt"
    data.write_text("\n".join(ts) + "\n")
    result = {}
    for pooling in ["cls", "mean"]:
        out = work / f"parity-{pooling}.npy"
        subprocess.run([str(bin_dir / "embedtune"), "embed", "--model", str(model_dir), "--data", str(data),
                        "--out", str(out), "--pooling", pooling, "--no-normalize", "--max-len", str(MAX_LEN),
                        "--batch-size", str(BATCH), "--device", device],
                       check=True, capture_output=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        got, want = np.load(out).astype(np.float64), ref[pooling].astype(np.float64)
        cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        result[pooling] = {"max_abs_diff": float(np.abs(got - want).max()), "min_cosine": float(cos.min())}
    result["ok"] = all(result[p]["max_abs_diff"] <= 1e-4 for p in ["cls", "mean"])
    return result


def device_tests(bin_dir, device):
    exe = bin_dir / "device-tests"
    env = dict(os.environ)
    if device != "cpu":
        env["EMBEDTUNE_TEST_DEVICE"] = device
    p = subprocess.run([str(exe), "--test-threads", "1"], capture_output=True, text=True, env=env)
    m = re.search(r"test result: (\w+)\. (\d+) passed; (\d+) failed", p.stdout)
    failed = re.findall(r"^test (\S+) \.\.\. FAILED", p.stdout, re.M)
    return {"ok": p.returncode == 0, "passed": int(m.group(2)) if m else 0,
            "failed": failed if m else ["(no result: " + p.stderr.strip()[-300:] + ")"],
            "device": device}


def short_fit(bin_dir, model_dir, device, work, ts, steps, dtype):
    data = work / "fit.txt"
    data.write_text("\n".join(ts) + "\n")
    out = work / f"fit-out-{dtype}"
    cmd = [str(bin_dir / "embedtune"), "fit", "--model", str(model_dir), "--data", str(data), "--out", str(out),
           "--overwrite", "--steps", str(steps), "--batch-size", str(BATCH), "--max-len", str(MAX_LEN),
           "--pooling", "cls", "--device", device, "--dtype", dtype, "--save-every", "0", "--eval-every", "0",
           "--holdout", "64", "--no-dedup", "--lr", "3e-5"]
    start = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if p.returncode != 0:
        return {"ok": False, "error": p.stderr.strip().splitlines()[-1:]}
    recs = [json.loads(l) for l in open(out / "train_log.jsonl") if l.strip()]
    losses = [r["loss"] for r in recs if "loss" in r]
    q = max(1, len(losses) // 4)
    finite = all(x == x and abs(x) != float("inf") for x in losses)
    falling = statistics.mean(losses[-q:]) < statistics.mean(losses[:q])
    speeds = [r["sentences_per_s"] for r in recs[2:] if "sentences_per_s" in r]
    return {"ok": finite and falling, "steps": len(losses), "first_loss": losses[0], "last_loss": losses[-1],
            "finite": finite, "falling": falling, "sentences_per_s": statistics.median(speeds) if speeds else None,
            "wall_seconds": time.perf_counter() - start}


def throughput(bin_dir, model_dir, device, work, ts, size):
    data = work / "throughput.txt"
    data.write_text("\n".join(ts) + "\n")
    flops = useful_flops_per_sentence(model_dir, ts, size)
    peak = H200_BF16_PEAK if device == "cuda" else None
    rows = []
    for mode in ["embed", "fit"]:
        for dtype in ["f32", "bf16"]:
            amount = size["embed_n"] if mode == "embed" else size["train_steps"]
            per_sentence = flops * (1 if mode == "embed" else 2 * 3)  # fit: two views, forward + backward
            samples = {"pytorch": [], "embedtune": []}
            for _ in range(size["rounds"]):  # alternating, medians
                samples["pytorch"].append(torch_side(model_dir, device, dtype, mode, ts, size["train_steps"]))
                samples["embedtune"].append(
                    embedtune_side(bin_dir, model_dir, device, dtype, "train" if mode == "fit" else "embed", data,
                                   amount))
            row = {"mode": mode, "dtype": dtype}
            for side, runs in samples.items():
                sps = statistics.median(r["sentences_per_s"] for r in runs)
                mems = [r["peak_memory_mib"] for r in runs if r["peak_memory_mib"] is not None]
                row[side] = {"sentences_per_s": sps, "peak_memory_mib": max(mems) if mems else None,
                             "fraction_of_bf16_peak": sps * per_sentence / peak if peak else None}
            row["ratio"] = row["embedtune"]["sentences_per_s"] / row["pytorch"]["sentences_per_s"]
            log(json.dumps(row))
            rows.append(row)
    return {"useful_flops_per_sentence_forward": flops, "bf16_peak_flops": peak, "rows": rows}


def graph_split(bin_dir, model_dir, device, work, ts, size):
    """embedtune's bf16 fit at max length 128 on sentences of mixed length
    (1 to 4 probe sentences joined): one padded pass per step, the
    device's default split, and up to 4 passes whatever they cost."""
    mixed = [" ".join(ts[i:i + 1 + i % 4]) for i in range(len(ts))]
    data = work / "mixed.txt"
    data.write_text("\n".join(mixed) + "\n")
    runs = {"one_pass": {"EMBEDTUNE_GRAPH_GROUPS": "1"}, "default": {},
            "four_passes_free": {"EMBEDTUNE_GRAPH_GROUPS": "4", "EMBEDTUNE_GRAPH_PASS_COST": "0"}}
    samples = {name: [] for name in runs}
    for _ in range(min(2, size["rounds"])):  # alternating, medians; 2 rounds keep the check short
        for name, env in runs.items():
            r = embedtune_side(bin_dir, model_dir, device, "bf16", "train", data, size["train_steps"],
                               dict(env, EMBEDTUNE_MAX_LEN="128"))
            samples[name].append(r["sentences_per_s"])
    row = {name: statistics.median(v) for name, v in samples.items()}
    return {"max_len": 128, "dtype": "bf16", "sentences_per_s": {n: row[n] for n in runs},
            "vs_one_pass": {n: row[n] / row["one_pass"] for n in runs if n != "one_pass"}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--bin", required=True, help="folder with embedtune, throughput, device-tests")
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    size = SIZES[args.device]
    bin_dir, work = pathlib.Path(args.bin), pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    report = {"device": args.device, "model": {k: size[k] for k in ["hidden", "layers", "heads", "inter"]},
              "batch_size": BATCH, "max_len": MAX_LEN, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if args.device == "cuda":
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True)
        report["gpu"] = q.stdout.strip()
    start = time.perf_counter()
    log("making the model")
    model_dir = make_model(work / "model", size)
    ts = texts(size["embed_n"])
    steps = [("parity", lambda: parity(bin_dir, model_dir, args.device, work, ts[:512])),
             ("device_tests", lambda: device_tests(bin_dir, args.device)),
             ("fit", lambda: short_fit(bin_dir, model_dir, args.device, work, ts, size["fit_steps"], "f32")),
             ("fit_bf16", lambda: short_fit(bin_dir, model_dir, args.device, work, ts, size["fit_steps"], "bf16")),
             ("throughput", lambda: throughput(bin_dir, model_dir, args.device, work, ts, size)),
             ("graph_split", lambda: graph_split(bin_dir, model_dir, args.device, work, ts, size))]
    for name, f in steps:
        log(name)
        t = time.perf_counter()
        try:
            report[name] = f()
        except Exception as e:  # one failing part must not lose the others
            report[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        report[name + "_seconds"] = round(time.perf_counter() - t, 1)
        pathlib.Path(args.out).write_text(json.dumps(report, indent=1))
    report["seconds"] = round(time.perf_counter() - start, 1)
    pathlib.Path(args.out).write_text(json.dumps(report, indent=1))
    log("wrote", args.out)


if __name__ == "__main__":
    main()
