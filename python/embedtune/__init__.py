"""embedtune: sentence embeddings with BERT-style encoders, in Rust.

``Embedder`` loads a model once and encodes texts to numpy arrays (or Arrow
arrays); ``diagnose`` measures how anisotropic a model's embeddings are;
``fit`` fine-tunes a model with alignment + uniformity (or InfoNCE) on
dropout pairs. The Rust code runs with the GIL released; its errors are
raised as ``EmbedtuneError`` (a ``ValueError``) with the message the command
line prints. ``embedtune.ray`` runs the same on a Ray cluster.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np

from . import _native
from ._native import EmbedtuneError

__all__ = ["Embedder", "EmbedtuneError", "VectorStats", "diagnose", "fit"]

PathLike = Union[str, "os.PathLike[str]"]


def _texts(texts: Iterable[str]) -> list:
    """``texts`` as a list of str, or a TypeError naming the first item that is not one."""
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be a sequence of str, not a single string")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, not str")
    return texts


class Embedder:
    """A model loaded once, ready to embed text.

    ``model`` is a model folder (Hugging Face / sentence-transformers layout)
    or a Hub id (``org/name[@revision]``). ``None`` options take what the
    model folder says: pooling from ``1_Pooling/config.json`` (else ``cls``),
    normalising when ``modules.json`` lists ``Normalize``, the maximum length
    from ``sentence_bert_config.json`` (else 512). ``batch_size`` is the
    number of texts per forward pass (texts are sorted by length first, so
    results do not depend on it beyond float rounding). One ``Embedder`` may
    be used from many threads at once.
    """

    def __init__(
        self,
        model: PathLike,
        pooling: Optional[str] = None,
        normalize: Optional[bool] = None,
        max_len: Optional[int] = None,
        batch_size: int = 32,
        device: str = "auto",
        dtype: str = "f32",
    ) -> None:
        self._native = _native.Embedder(
            os.fspath(model), pooling, normalize, max_len, batch_size, device, dtype
        )

    @property
    def dim(self) -> int:
        """Dimensions of the embeddings."""
        return self._native.dim

    @property
    def pooling(self) -> str:
        return self._native.pooling

    @property
    def normalize(self) -> bool:
        return self._native.normalize

    @property
    def max_len(self) -> int:
        return self._native.max_len

    @property
    def model(self) -> str:
        return self._native.model

    def __repr__(self) -> str:
        return (
            f"Embedder({self.model!r}, pooling={self.pooling!r}, "
            f"normalize={self.normalize}, max_len={self.max_len}, dim={self.dim})"
        )

    def encode(self, texts: Union[str, Sequence[str]]) -> np.ndarray:
        """Embeddings of ``texts`` as a float32 array ``(len(texts), dim)``,
        rows in input order (one string gives a ``(dim,)`` vector).

        The GIL is released while Rust computes; Ctrl-C is noticed between
        batches and raises KeyboardInterrupt.
        """
        if isinstance(texts, str):
            return self.encode([texts])[0]
        texts = _texts(texts)
        raw = self._native.encode(texts)
        return np.frombuffer(raw, dtype="<f4").reshape(len(texts), self.dim)

    def encode_arrow(self, texts: Any) -> Any:
        """Embeddings of a pyarrow string array (``string``/``large_string``,
        chunked or not) as a ``FixedSizeList<float32>[dim]`` array, row i the
        embedding of text i. A null is embedded as the empty text, as
        ``embedtune embed`` does."""
        import pyarrow as pa

        if isinstance(texts, pa.ChunkedArray):
            texts = texts.combine_chunks()
        if not isinstance(texts, pa.Array) or not (
            pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)
        ):
            raise TypeError(
                f"encode_arrow takes a pyarrow string array, not {type(texts).__name__}"
                + (f" of {texts.type}" if isinstance(texts, pa.Array) else "")
            )
        values = texts.fill_null("").to_pylist()
        flat = self.encode(values).reshape(-1)
        return pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), self.dim)


class VectorStats:
    """Mergeable statistics of a set of vectors (``diagnose``'s pooled
    figures without the model): ``add`` rows, ``merge`` the partial
    statistics of other shards (any split gives the same result: exact sums,
    and a reservoir sample that depends on the set of vectors only),
    ``finish`` for the figures. Picklable (through ``to_bytes``), so partial
    statistics travel between processes. Options: ``seed`` (0),
    ``reservoir`` (vectors kept for the sampled figures, 10,000),
    ``histogram_bins`` (100), ``t`` (uniformity temperature, 2)."""

    def __init__(
        self,
        dim: int,
        seed: Optional[int] = None,
        reservoir: Optional[int] = None,
        histogram_bins: Optional[int] = None,
        t: Optional[float] = None,
    ) -> None:
        self._native = _native.VectorStats(dim, seed, reservoir, histogram_bins, t)

    @property
    def dim(self) -> int:
        return self._native.dim

    def __len__(self) -> int:
        return len(self._native)

    def add(self, rows: Any) -> "VectorStats":
        """Adds the rows of a ``(n, dim)`` array (or one ``(dim,)`` vector)."""
        rows = np.asarray(rows, dtype=np.float32)
        if rows.ndim == 1:
            rows = rows[None, :]
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"expected rows of {self.dim} values, got an array of shape {rows.shape}")
        self._native.add(np.ascontiguousarray(rows, dtype="<f4").tobytes())
        return self

    def merge(self, other: "VectorStats") -> "VectorStats":
        """Adds ``other``'s statistics to these (same dim and options)."""
        self._native.merge(other._native)
        return self

    def to_bytes(self) -> bytes:
        return self._native.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> "VectorStats":
        stats = cls.__new__(cls)
        stats._native = _native.VectorStats.from_bytes(bytes(data))
        return stats

    def __reduce__(self):
        return (VectorStats.from_bytes, (self.to_bytes(),))

    def finish(self) -> dict:
        """The figures (``avg_cosine``, ``uniformity``, ``top1_variance_ratio``,
        ``effective_rank``, ``mean_vector_norm``, ``isoscore``, ``n``,
        ``pairs``, and which are ``exact`` or ``sampled``) as a dict."""
        return json.loads(self._native.finish())


_DIAGNOSE_OPTIONS = ("max_samples", "seed", "alignment_samples", "token_samples")


def diagnose(
    model: Union[PathLike, Embedder],
    texts: Optional[Sequence[str]] = None,
    **opts: Any,
) -> dict:
    """``embedtune diagnose``: the report as a dict with the JSON keys
    (``avg_cosine``, ``uniformity``, ``alignment``, ``top1_variance_ratio``,
    ``effective_rank``, ``mean_vector_norm``, ``isoscore``,
    ``per_layer_avg_cosine``, ``token_avg_cosine``, ``n``, ``pairs``, ...).

    ``texts`` default to the ~1,000 built-in probe sentences. Options:
    ``max_samples``, ``seed`` (0), ``alignment_samples`` (1000),
    ``token_samples`` (4000), and, when ``model`` is a path or Hub id, the
    ``Embedder`` options (``pooling``, ``max_len``, ``batch_size``,
    ``device``, ``dtype``).
    """
    diag = {k: opts.pop(k) for k in _DIAGNOSE_OPTIONS if k in opts}
    if isinstance(model, Embedder):
        if opts:
            raise TypeError(
                f"diagnose: {', '.join(sorted(opts))} cannot be set on an Embedder that is already loaded"
            )
        embedder = model
    else:
        embedder = Embedder(model, **opts)
    probe = None if texts is None else _texts(texts)
    return json.loads(_native.diagnose(embedder._native, probe, **diag))


def _flag(name: str, value: Any) -> list:
    """One keyword as ``embedtune fit`` flags: ``lr=1e-4`` → ``--lr 1e-4``,
    ``no_dedup=True`` → ``--no-dedup``; False and None leave the flag out."""
    if value is None or value is False:
        return []
    flag = "--" + name.replace("_", "-")
    if value is True:
        return [flag]
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return [flag, str(value)]


def fit(model: PathLike, data: PathLike, out: PathLike, verbose: bool = True, **opts: Any) -> dict:
    """``embedtune fit``: fine-tunes ``model`` on the sentences of ``data``
    and saves a sentence-transformers model folder in ``out``; returns the
    report (``report.json``) as a dict.

    Options are the command's flags by name, with its defaults (see
    ``embedtune fit --help`` and the README): ``loss``, ``lr``,
    ``batch_size``, ``steps``, ``epochs``, ``max_len``, ``pooling``,
    ``seed``, ``holdout``, ``max_samples``, ``eval_sts``, ``recipe``,
    ``resume=True``, ``overwrite=True``, ``no_dedup=True``, ... ``verbose``
    prints progress to stderr. Ctrl-C saves a checkpoint and raises
    KeyboardInterrupt; ``resume=True`` continues.
    """
    flags = _flag("model", model) + _flag("data", data) + _flag("out", out)
    for name, value in opts.items():
        flags += _flag(name, value)
    return json.loads(_native.fit(flags, verbose))
