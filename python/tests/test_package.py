"""The Python package against the binary: same vectors, same reports, the
GIL released, clear errors."""

import json
import os
import signal
import subprocess
import threading
import time

import numpy as np
import pyarrow as pa
import pytest

import embedtune
from conftest import cli_embed


def test_encode_equals_cli_embed(binary, model, embedder, sentences, tmp_path):
    want = cli_embed(binary, model, sentences, tmp_path)
    got = embedder.encode(sentences)
    assert got.dtype == np.float32 and got.shape == (len(sentences), 384)
    assert np.abs(got - want).max() <= 1e-6


def test_encode_options_equal_cli_flags(binary, model, sentences, tmp_path):
    texts = sentences[:64]
    want = cli_embed(
        binary, model, texts, tmp_path, "--pooling", "cls", "--no-normalize", "--max-len", "16",
        "--batch-size", "8",
    )
    e = embedtune.Embedder(model, pooling="cls", normalize=False, max_len=16, batch_size=8)
    assert (e.pooling, e.normalize, e.max_len, e.dim) == ("cls", False, 16, 384)
    assert np.abs(e.encode(texts) - want).max() <= 1e-6


def test_encode_arrow_and_single_text(embedder, sentences):
    texts = sentences[:20]
    dense = embedder.encode(texts)
    arrow = embedder.encode_arrow(pa.chunked_array([texts[:7], texts[7:]], type=pa.large_string()))
    assert arrow.type == pa.list_(pa.float32(), 384)
    assert np.array_equal(np.stack(arrow.to_numpy(zero_copy_only=False)), dense)
    assert np.array_equal(embedder.encode(texts[3]), dense[3])
    with_null = embedder.encode_arrow(pa.array(["", None]))
    assert np.array_equal(with_null[0].values, with_null[1].values)
    assert embedder.encode([]).shape == (0, 384)


def test_gil_released_during_encode(embedder, sentences):
    """A pure-Python thread keeps running while Rust encodes: over at least
    a second of `encode` calls, it never stalls for more than 0.25 s."""
    stamps = []
    stop = threading.Event()

    def tick():
        while not stop.is_set():
            stamps.append(time.perf_counter())
            time.sleep(0.001)

    thread = threading.Thread(target=tick)
    thread.start()
    time.sleep(0.05)
    calls = []
    while sum(end - start for start, end in calls) < 1.0:
        start = time.perf_counter()
        embedder.encode(sentences)
        calls.append((start, time.perf_counter()))
    stop.set()
    thread.join()
    for start, end in calls:
        during = [t for t in stamps if start <= t <= end]
        gap = np.diff([start, *during, end]).max()
        # Held for the whole call, the thread would stop for its full length.
        assert gap < 0.25, f"the thread stalled {gap:.2f} s of a {end - start:.2f} s encode"


def test_ctrl_c_interrupts_encode(model, sentences):
    """SIGINT during a long encode raises KeyboardInterrupt at the next batch."""
    # A process started in the background by a non-interactive shell (as CI
    # scripts often are) inherits SIGINT ignored, and Python then installs no
    # handler: give it Python's own, as an interactive session has.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    embedder = embedtune.Embedder(model, batch_size=4)
    timer = threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT))
    start = time.perf_counter()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            embedder.encode(sentences * 8)
    finally:
        timer.join()
        signal.signal(signal.SIGINT, previous)
    took = time.perf_counter() - start
    # The whole call takes tens of seconds here; a batch of 4, a fraction of one.
    assert took < 3.0, f"stopped only after {took:.2f} s"


def test_threads_share_one_embedder(embedder, sentences):
    texts = sentences[:48]
    want = embedder.encode(texts)
    results = [None, None]

    def run(i):
        results[i] = embedder.encode(texts)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(r, want) for r in results)


def one_line_error(exc_type, call, *needles):
    with pytest.raises(exc_type) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and message
    for needle in needles:
        assert needle in message, message
    return message


def test_bad_inputs_raise_clear_errors(model, embedder, tmp_path):
    E = embedtune.EmbedtuneError
    assert issubclass(E, ValueError)
    one_line_error(E, lambda: embedtune.Embedder(tmp_path / "none"), "no such folder")
    one_line_error(E, lambda: embedtune.Embedder(model, pooling="avg"), "unknown pooling `avg`")
    one_line_error(E, lambda: embedtune.Embedder(model, device="tpu"), "tpu")
    one_line_error(E, lambda: embedtune.Embedder(model, dtype="f64"), "not one of f32, bf16, f16")
    one_line_error(E, lambda: embedtune.Embedder(model, batch_size=0), "--batch-size 0")
    one_line_error(TypeError, lambda: embedder.encode(["ok", 3]), "texts[1] is int")
    one_line_error(TypeError, lambda: embedder.encode(b"bytes"), "sequence of str")
    one_line_error(TypeError, lambda: embedder.encode_arrow(pa.array([1, 2])), "string array")
    one_line_error(E, lambda: embedtune.diagnose(embedder, ["only one"]), "at least 2 sentences")
    one_line_error(TypeError, lambda: embedtune.diagnose(embedder, ["a", "b"], pooling="cls"), "pooling")
    out = tmp_path / "out"
    one_line_error(E, lambda: embedtune.fit(model, tmp_path / "none.txt", out), "none.txt")
    one_line_error(E, lambda: embedtune.fit(model, tmp_path, out, lrr=1), "--lrr")
    one_line_error(E, lambda: embedtune.fit(model, tmp_path, out, lr="fast"), "--lr", "fast")
    one_line_error(E, lambda: embedtune.fit(model, tmp_path, out, recipe="x", lr=1), "--recipe")


DOCUMENTED_KEYS = {
    "avg_cosine", "uniformity", "alignment", "top1_variance_ratio", "effective_rank",
    "mean_vector_norm", "isoscore", "per_layer_avg_cosine", "token_avg_cosine",
    "model", "pooling", "max_len", "n", "pairs", "pairs_exact", "alignment_n", "token_samples",
}


def test_diagnose_equals_cli(binary, model, sentences, tmp_path):
    texts = sentences[:120]
    got = embedtune.diagnose(model, texts, seed=3, max_len=32)
    assert set(got) == DOCUMENTED_KEYS
    data = tmp_path / "probe.txt"
    data.write_text("\n".join(texts) + "\n", encoding="utf-8")
    run = subprocess.run(
        [binary, "diagnose", "--model", model, "--data", str(data), "--seed", "3",
         "--max-len", "32", "--format", "json"],
        check=True, capture_output=True, text=True,
    )
    want = json.loads(run.stdout)
    assert got["n"] == want["n"] == 120
    for key in DOCUMENTED_KEYS - {"model"}:
        if isinstance(want[key], (str, bool)):
            assert got[key] == want[key], key
        else:
            assert np.allclose(got[key], want[key], rtol=1e-9, atol=1e-12), key


def test_fit_report_and_cli_defaults(binary, model, sentences, tmp_path):
    """Python's fit builds the same job as the binary: same config, same result."""
    data = tmp_path / "corpus.txt"
    data.write_text("\n".join(sentences[:160]) + "\n", encoding="utf-8")
    opts = dict(steps=2, batch_size=8, max_len=16, holdout=40, save_every=1000)
    report = embedtune.fit(model, data, tmp_path / "py", verbose=False, **opts)
    for key in ("base_model", "steps", "config", "saved_step", "before", "after", "train_seconds"):
        assert key in report
    assert report["steps"] == 2 and report["held_out_sentences"] > 0
    assert set(report["after"]) == DOCUMENTED_KEYS
    assert (tmp_path / "py" / "model.safetensors").exists()
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in opts.items()]
    subprocess.run(
        [binary, "fit", "--model", model, "--data", str(data), "--out", str(tmp_path / "cli"), *flags],
        check=True, capture_output=True,
    )
    cli = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert report["config"] == cli["config"]
    for key in ("avg_cosine", "uniformity", "alignment"):
        assert abs(report["after"][key] - cli["after"][key]) <= 1e-6, key
