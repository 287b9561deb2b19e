#!/usr/bin/env python3
"""A small, targeted mutation pass over the numeric core: each mutant is a
one-line arithmetic change in the losses, metrics, pooling, the CPU pass's
dropout, the fused kernels or AdamW. For each, the tests that cover that
code run; a mutant no test fails on "survives". The source is restored
after every mutant (also on Ctrl-C).

  scripts/mutation-check.py [--only SUBSTRING]

Prints one line per mutant and a summary; exits 1 if any survived.
(cargo-mutants would generate hundreds of mutants for these files; on two
cores each costs minutes, so this list is chosen by hand: one change per
formula the suite must pin down.)
"""
import argparse
import pathlib
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

# (file, exact text, replacement, what it breaks)
MUTANTS = [
    ("src/pooling.rs", "let counts = mask.sum(1)?.clamp(1e-9, f64::INFINITY)?;",
     "let counts = (mask.sum(1)? + 1.0)?.clamp(1e-9, f64::INFINITY)?;", "masked mean divides by count + 1"),
    ("src/losses.rs", "(sq + 1e-12)?.powf(alpha / 2.0)?", "(sq + 1e-12)?.powf(alpha)?", "alignment exponent α instead of α/2 on ‖d‖²"),
    ("src/losses.rs", "let logits = (sq_dist * (-t))?;", "let logits = (sq_dist * (-t * 0.5))?;", "uniformity temperature halved"),
    ("src/losses.rs", "Ok((log_sum_exp_all(&logits)? - pairs.ln())?)", "Ok((log_sum_exp_all(&logits)? - (pairs + 1.0).ln())?)", "uniformity mean over one pair too many"),
    ("src/losses.rs", "let sim = (l2_normalize(x)?.matmul(&l2_normalize(y)?.t()?)? / tau)?;",
     "let sim = (l2_normalize(x)?.matmul(&l2_normalize(y)?.t()?)? * tau)?;", "InfoNCE multiplies by τ"),
    ("src/metrics/pairs.rs", "Ok((total - self_dots) / (n as f64 * (n as f64 - 1.0)))", "Ok((total - self_dots) / (n as f64 * n as f64))", "average cosine over n² pairs"),
    ("src/metrics/pairs.rs", "Ok(d.iter().map(|v| v * v).sum::<f64>() / d.len() as f64)", "Ok(d.iter().map(|v| v * v).sum::<f64>() / (d.len() as f64 + 1.0))", "alignment metric over one pair too many"),
    ("src/metrics/correlation.rs", "Ok(sxy / (sxx * syy).sqrt())", "Ok(sxy / (sxx * syy.max(1.0)).sqrt())", "Pearson denominator clamped"),
    ("src/metrics/spectrum.rs", ".map(|p| -p * p.ln())", ".map(|p| -p * p.log2())", "effective rank in bits"),
    ("src/models/bert/cpu/packing.rs", "scale: 1.0 / (1.0 - p),", "scale: 1.0,", "CPU-pass dropout without the 1/(1−p) scale"),
    ("src/kernels/norm.rs", "(mean, 1.0 / (var + eps).sqrt())", "(mean, 1.0 / (var + eps * 1e6).sqrt())", "LayerNorm epsilon inflated"),
    ("src/kernels/softmax.rs", "let inv = 1.0 / sum;", "let inv = 1.0 / (sum + 1e-3);", "softmax rows summing to slightly under 1"),
    ("src/training/optim.rs", "*t = *t * decay - lr * (m * ibc1) / ((v * ibc2).sqrt() + eps);",
     "*t = *t * decay - lr * (m * ibc1) / ((v * ibc1).sqrt() + eps);", "AdamW second-moment bias correction with β1"),
    ("src/training/optim.rs", "let decay = (1.0 - self.lr * self.p.weight_decay) as f32;",
     "let decay = (1.0 + self.lr * self.p.weight_decay) as f32;", "AdamW weight decay with the wrong sign"),
]

TESTS = ["--lib", "--test", "losses", "--test", "metrics", "--test", "parity", "--test",
         "encoder_training", "--test", "fused_ops", "--test", "device"]


def run_tests():
    cmd = ["cargo", "test", "--locked", "-q", *TESTS]
    p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # `-q` lists the failing tests under "failures:", indented.
    failed, listing = [], False
    for line in p.stdout.splitlines():
        if line == "failures:":
            listing = True
        elif listing and line.startswith("    ") and " " not in line.strip():
            failed.append(line.strip())
        elif listing and line.startswith("test result"):
            listing = False
    build_error = "error[" in p.stdout or "could not compile" in p.stdout
    return p.returncode, failed, build_error, p.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only")
    args = ap.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the source is restored.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    survived = []
    for path, old, new, what in MUTANTS:
        if args.only and args.only not in what and args.only not in path:
            continue
        f = ROOT / path
        src = f.read_text()
        if src.count(old) != 1:
            print(f"?? {path}: text not found once: {old}")
            survived.append(what)
            continue
        f.write_text(src.replace(old, new))
        start = time.time()
        try:
            rc, failed, build_error, out = run_tests()
        finally:
            f.write_text(src)
        secs = time.time() - start
        if build_error:
            print(f"!! {path}: {what}: does not compile\n{out[-2000:]}")
            survived.append(what)
        elif rc == 0:
            print(f"SURVIVED {path}: {what} ({secs:.0f} s)")
            survived.append(what)
        else:
            print(f"caught   {path}: {what} by {', '.join(failed[:4]) or 'a failing test'} ({secs:.0f} s)")
        sys.stdout.flush()
    print(f"{len(survived)} survived: {survived}")
    sys.exit(1 if survived else 0)


if __name__ == "__main__":
    main()
