"""embedtune on Ray Data.

``Embed`` is a callable class for ``Dataset.map_batches``: each actor loads
the model once and adds an embedding column (``FixedSizeList<float32>``) to
every pyarrow batch. ``embed`` wraps that call. ``diagnose`` computes the
anisotropy statistics of an embedding column block by block (mergeable
partial statistics, ``embedtune.VectorStats``) and merges them on the
driver, so the result equals one process's over the whole column.

    import ray, embedtune.ray
    ray.init(address="auto")
    ds = ray.data.read_parquet("s3://bucket/corpus/")
    ds = embedtune.ray.embed(ds, "sentence-transformers/all-MiniLM-L6-v2", workers=8)
    ds.write_parquet("s3://bucket/embedded/")
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional

import pyarrow as pa

from . import Embedder

__all__ = ["Embed", "embed", "diagnose"]


def _use_assigned_cpus() -> None:
    """Sizes Rust's thread pool to the CPUs Ray gave this worker (rather
    than every core of the node), unless RAYON_NUM_THREADS is set. Must run
    before the first Rust computation in the process."""
    if "RAYON_NUM_THREADS" in os.environ:
        return
    try:
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # not inside a Ray worker
        return
    if cpus:
        os.environ["RAYON_NUM_THREADS"] = str(math.ceil(cpus))


class Embed:
    """``Dataset.map_batches(Embed, fn_constructor_kwargs={"model": M},
    batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=N))``: adds ``output_column``, the
    embeddings of ``column``, to each batch; rows keep their order within a
    batch. ``embedder_opts`` are ``Embedder``'s (pooling, normalize,
    max_len, batch_size, device, dtype)."""

    def __init__(
        self,
        model: str,
        column: str = "text",
        output_column: str = "embedding",
        **embedder_opts: Any,
    ) -> None:
        _use_assigned_cpus()
        self.embedder = Embedder(model, **embedder_opts)
        self.column = column
        self.output_column = output_column

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.column not in batch.column_names:
            raise KeyError(
                f"no column `{self.column}` in the batch (columns: {', '.join(batch.column_names)})"
            )
        vectors = self.embedder.encode_arrow(batch.column(self.column))
        return batch.append_column(self.output_column, vectors)


def embed(
    dataset: Any,
    model: str,
    column: str = "text",
    output_column: str = "embedding",
    workers: int = 1,
    cpus_per_worker: float = 1,
    batch_size: int = 1024,
    **embedder_opts: Any,
) -> Any:
    """``dataset`` with ``output_column`` added: ``workers`` actors, each
    with ``cpus_per_worker`` CPUs (that many Rust threads) and one copy of
    the model, take batches of ``batch_size`` rows. Leave the cluster some
    CPUs beside the actors for Ray Data's read and write tasks: actors that
    hold every CPU starve the reads, and nothing moves."""
    import ray

    return dataset.map_batches(
        Embed,
        fn_constructor_kwargs=dict(
            model=model, column=column, output_column=output_column, **embedder_opts
        ),
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=cpus_per_worker,
    )


def _matrix(column: Any) -> Any:
    """A FixedSizeList<float32> (or float64) column as a float32 (n, dim) array."""
    import numpy as np

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not pa.types.is_fixed_size_list(column.type) or not pa.types.is_floating(
        column.type.value_type
    ):
        raise TypeError(f"expected a FixedSizeList<float32> embedding column, got {column.type}")
    if column.null_count:
        raise ValueError(f"the embedding column has {column.null_count} null rows")
    dim = column.type.list_size
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(flat, dtype=np.float32).reshape(-1, dim)


def _partial(column: str, stats_opts: dict):
    """A map_batches function: one block's statistics, serialised."""

    def run(batch: pa.Table) -> pa.Table:
        from . import VectorStats

        if column not in batch.column_names:
            raise KeyError(
                f"no column `{column}` in the dataset (columns: {', '.join(batch.column_names)})"
            )
        rows = _matrix(batch.column(column))
        stats = VectorStats(rows.shape[1], **stats_opts)
        stats.add(rows)
        return pa.table({"stats": pa.array([stats.to_bytes()], type=pa.binary())})

    return run


def diagnose(dataset: Any, column: str = "embedding", **opts: Any) -> dict:
    """The anisotropy statistics of ``dataset[column]`` (a
    ``FixedSizeList<float32>`` column, as ``embed`` writes): each block's
    partial statistics computed where it lives, merged on the driver. The
    same dict as ``embedtune.VectorStats.finish`` on all rows in one
    process. ``opts`` are VectorStats's (seed, reservoir, histogram_bins, t).
    """
    from . import VectorStats

    parts = dataset.map_batches(
        _partial(column, opts), batch_format="pyarrow", batch_size=None
    ).take_all()
    if not parts:
        raise ValueError("the dataset is empty")
    merged: Optional[VectorStats] = None
    for part in parts:
        stats = VectorStats.from_bytes(part["stats"])
        if merged is None:
            merged = stats
        else:
            merged.merge(stats)
    return merged.finish()
