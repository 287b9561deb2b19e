"""embedtune.ray on a local Ray cluster (2 CPUs, 2 actors): Parquet in,
Parquet out, the same vectors as `embedtune embed`; the distributed
diagnose equals one process's statistics."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import embedtune
from conftest import cli_embed

ray = pytest.importorskip("ray")
import embedtune.ray as et_ray  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def parquet_dir(sentences, tmp_path_factory):
    """The sentences with an id column, in four Parquet files."""
    folder = tmp_path_factory.mktemp("corpus")
    quarter = len(sentences) // 4
    for i in range(4):
        rows = range(i * quarter, len(sentences) if i == 3 else (i + 1) * quarter)
        table = pa.table({"id": list(rows), "text": [sentences[r] for r in rows]})
        pq.write_table(table, folder / f"part-{i}.parquet")
    return folder


@pytest.fixture(scope="module")
def embedded(cluster, model, parquet_dir, tmp_path_factory):
    """The corpus embedded by 2 actors and written to Parquet, read back."""
    out = tmp_path_factory.mktemp("embedded")
    ds = ray.data.read_parquet(str(parquet_dir)).repartition(4)
    # Half a CPU each leaves one of the two for the read and write tasks.
    ds = et_ray.embed(ds, model, workers=2, cpus_per_worker=0.5, batch_size=64)
    ds.write_parquet(str(out))
    return pq.read_table(out).sort_by("id")


def test_ray_embed_parquet_equals_cli_embed(binary, model, sentences, embedded, tmp_path):
    want = cli_embed(binary, model, sentences, tmp_path)
    assert embedded.column("id").to_pylist() == list(range(len(sentences)))
    assert embedded.column("text").to_pylist() == sentences
    assert embedded.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    got = np.stack(embedded.column("embedding").to_numpy(zero_copy_only=False))
    assert np.abs(got - want).max() <= 1e-6


def test_ray_embed_missing_column_is_clear(cluster, model, parquet_dir):
    ds = ray.data.read_parquet(str(parquet_dir))
    ds = et_ray.embed(ds, model, column="sentence", cpus_per_worker=0.5)
    with pytest.raises(Exception, match="no column `sentence`"):
        ds.materialize()


def test_distributed_diagnose_equals_one_process(cluster, embedded):
    rows = np.stack(embedded.column("embedding").to_numpy(zero_copy_only=False))
    single = embedtune.VectorStats(rows.shape[1]).add(rows).finish()
    blocks = ray.data.from_arrow(embedded).repartition(4)
    merged = et_ray.diagnose(blocks, column="embedding")
    assert merged["n"] == single["n"] == len(rows)
    for key, want in single.items():
        if isinstance(want, float):
            assert abs(merged[key] - want) <= 1e-9 * max(1.0, abs(want)), key
        else:
            assert merged[key] == want, key
    # Against numpy: the mean cosine over distinct pairs.
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    gram = unit.astype(np.float64) @ unit.T.astype(np.float64)
    n = len(rows)
    assert abs(single["avg_cosine"] - (gram.sum() - n) / (n * (n - 1))) <= 1e-6


def test_vector_stats_pickle_and_merge_errors(embedded):
    import pickle

    rows = np.stack(embedded.column("embedding").to_numpy(zero_copy_only=False))
    stats = embedtune.VectorStats(rows.shape[1]).add(rows[:50])
    again = pickle.loads(pickle.dumps(stats))
    assert len(again) == 50 and again.finish() == stats.finish()
    with pytest.raises(ValueError, match="384"):
        stats.add(np.zeros((2, 3)))
    with pytest.raises(embedtune.EmbedtuneError):
        stats.merge(embedtune.VectorStats(rows.shape[1], seed=1))
