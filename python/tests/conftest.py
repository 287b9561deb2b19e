"""Shared fixtures: the real model and book sentences from ../shared (as the
Rust tests use them), and the `embedtune` binary built by `cargo test`."""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"


def _required(path: Path, what: str, variable: str) -> Path:
    """`path`, or a skip (a failure under CI) when it is absent."""
    if path.exists():
        return path
    message = f"{what} not found at {path} (set {variable})"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def model() -> str:
    default = SHARED / "models" / "all-MiniLM-L6-v2"
    path = Path(os.environ.get("EMBEDTUNE_TEST_MODEL", default))
    return str(_required(path, "test model", "EMBEDTUNE_TEST_MODEL"))


@pytest.fixture(scope="session")
def binary() -> str:
    default = REPO / "target" / "debug" / "embedtune"
    path = Path(os.environ.get("EMBEDTUNE_BIN", default))
    return str(_required(path, "the embedtune binary (cargo test --no-run)", "EMBEDTUNE_BIN"))


@pytest.fixture(scope="session")
def sentences() -> list:
    """300 sentences of Emma, as the file holds them (one per line)."""
    path = _required(SHARED / "data" / "books" / "austen-emma.txt", "books corpus", "-")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines[1000:1300]


@pytest.fixture(scope="session")
def embedder(model):
    import embedtune

    return embedtune.Embedder(model)


def cli_embed(binary: str, model: str, texts: list, tmp: Path, *flags: str) -> np.ndarray:
    """`embedtune embed` of `texts` (a .txt file, one per line) as an array."""
    data = tmp / "texts.txt"
    data.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp / "vectors.npy"
    subprocess.run(
        [binary, "embed", "--model", model, "--data", str(data), "--out", str(out), *flags],
        check=True,
        capture_output=True,
    )
    return np.load(out)
