"""pyarrow behaves the same with the zerrow pool as its default: every operation
here runs once under the stock default pool and once under zerrow, and the
results must be equal (and, under zerrow, lie in zerrow memory where pyarrow
allocates from the default pool)."""

import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.feather as feather
import pyarrow.json as pajson
import pyarrow.parquet as pq
import pytest

import zerrow_pool

N = 30_000


def _table():
    rng = np.random.default_rng(42)
    return pa.table({
        "id": pa.array(np.arange(N, dtype=np.int64)),
        "k": pa.array(rng.integers(0, 50, N).astype(np.int32)),
        "x": pa.array(rng.normal(size=N)),
        "s": pa.array([f"name-{i % 777}" if i % 13 else None for i in range(N)]),
        "d": pa.array(np.arange(N, dtype=np.int64).astype("datetime64[ms]")),
        "l": pa.array([[i, i + 1] if i % 5 else [] for i in range(N)]),
        "c": pa.array([["red", "green", "blue"][i % 3] for i in range(N)]).dictionary_encode(),
    })


def op_compute(tmp):
    t = pa.Table.from_pydict(_table().to_pydict(), schema=_table().schema)  # rebuilt under the pool
    out = {
        "sorted": t.take(pc.sort_indices(t, [("k", "ascending"), ("x", "descending")])),
        "filtered": t.filter(pc.and_(pc.greater(t["x"], 0), pc.is_valid(t["s"]))),
        "upper": pc.utf8_upper(t["s"]),
        "split": pc.split_pattern(t["s"], "-"),
        "cast": pc.cast(t["x"], pa.string()),
        "cumsum": pc.cumulative_sum(t["id"]),
        "unique": pc.unique(t["k"]).sort(),
        "counts": pc.value_counts(t["s"]).flatten(),
        "quantile": pc.quantile(t["x"], q=[0.1, 0.5, 0.9]),
        "flatten": pc.list_flatten(t["l"]),
        "concat": pa.concat_tables([t, t.slice(100, 500)]).combine_chunks(),
        "cast_dict": t["c"].cast(pa.string()),
    }
    return out


def op_acero(tmp):
    t = _table()
    g = t.group_by(["k"]).aggregate([("x", "sum"), ("x", "mean"), ("s", "count_distinct"), ("id", "max")])
    right = pa.table({"k": pa.array(np.arange(50, dtype=np.int32)), "label": [f"L{i}" for i in range(50)]})
    j = t.select(["id", "k"]).join(right, "k")
    return {"group_by": g.sort_by("k"), "join": j.sort_by("id")}


def op_parquet(tmp):
    t = _table()
    path = tmp / "t.parquet"
    pq.write_table(t, path, row_group_size=4000, compression="zstd")
    back = pq.read_table(path, use_threads=True)
    cols = pq.read_table(path, columns=["id", "s"], filters=[("k", "<", 10)])
    meta = pq.read_metadata(path)
    return {"back": back, "cols": cols, "row_groups": meta.num_row_groups}


def op_csv(tmp):
    t = _table().select(["id", "k", "x", "s"])
    path = tmp / "t.csv"
    pacsv.write_csv(t, path)
    back = pacsv.read_csv(path, read_options=pacsv.ReadOptions(use_threads=True, block_size=1 << 15))
    streamed = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=1 << 15)).read_all()
    return {"back": back, "streamed": streamed}


def op_json(tmp):
    lines = "\n".join(f'{{"a": {i}, "b": "v{i % 9}", "c": [{i}, 2]}}' for i in range(5000)).encode()
    return {"json": pajson.read_json(io.BytesIO(lines))}


def op_ipc(tmp):
    t = _table()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema) as w:
        for b in t.to_batches(max_chunksize=3000):
            w.write_batch(b)
    stream = pa.ipc.open_stream(sink.getvalue()).read_all()
    sink2 = pa.BufferOutputStream()
    with pa.ipc.new_file(sink2, t.schema, options=pa.ipc.IpcWriteOptions(compression="lz4")) as w:
        w.write_table(t, max_chunksize=7000)
    file_ = pa.ipc.open_file(sink2.getvalue()).read_all()
    feather.write_feather(t, tmp / "t.feather")
    fea = feather.read_table(tmp / "t.feather")
    return {"stream": stream, "file_lz4": file_, "feather": fea}


def op_pandas(tmp):
    t = _table().select(["id", "k", "x", "s", "d"])
    df = t.to_pandas()
    back = pa.Table.from_pandas(df, preserve_index=False)
    df2 = pd.DataFrame({"a": np.arange(1000), "b": [str(i) for i in range(1000)], "c": pd.Categorical(["u", "v"] * 500)})
    return {"df": df, "back": back, "from_pandas": pa.Table.from_pandas(df2), "numpy": t["x"].to_numpy()}


def op_dataset(tmp):
    t = _table().select(["id", "k", "x", "s"])
    root = tmp / "ds"
    ds.write_dataset(t, root, format="parquet", partitioning=["k"], partitioning_flavor="hive",
                     existing_data_behavior="overwrite_or_ignore")
    d = ds.dataset(root, format="parquet", partitioning="hive")
    scanned = d.to_table(filter=pc.field("k") < 20, columns=["id", "x", "k"]).sort_by("id")
    batches = sum(b.num_rows for b in d.to_batches(batch_size=1000))
    head = d.sort_by("id").head(100)
    return {"scanned": scanned, "rows": batches, "head": head}


OPS = [op_compute, op_acero, op_parquet, op_csv, op_json, op_ipc, op_pandas, op_dataset]


def _equal(a, b):
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, (pa.Table, pa.Array, pa.ChunkedArray, pa.RecordBatch, pa.Scalar)):
        assert a.equals(b)
    else:
        assert a == b


@pytest.mark.parametrize("op", OPS, ids=lambda f: f.__name__[3:])
def test_same_results_under_zerrow_pool(op, tmp_path):
    (tmp_path / "ref").mkdir()
    (tmp_path / "z").mkdir()
    ref = op(tmp_path / "ref")
    assert pa.default_memory_pool().backend_name != "zerrow" or zerrow_pool.preload_active
    previous = pa.default_memory_pool()
    b0 = zerrow_pool.pool().bytes_allocated()
    pa.set_memory_pool(zerrow_pool.pool())
    try:
        got = op(tmp_path / "z")
        assert zerrow_pool.pool().bytes_allocated() > b0, "nothing was allocated from the zerrow pool"
    finally:
        pa.set_memory_pool(previous)
    assert got.keys() == ref.keys()
    for key in ref:
        _equal(got[key], ref[key])


def test_compute_results_lie_in_zerrow_memory(zerrow_default):
    got = op_compute(None)
    for key, value in got.items():
        if isinstance(value, (pa.Table, pa.Array, pa.ChunkedArray)):
            assert zerrow_pool.owns(value), key


def test_readers_results_lie_in_zerrow_memory(zerrow_default, tmp_path):
    # Readers that allocate from pyarrow's default pool. (Filtered Parquet reads and
    # dataset sort go through Acero, and feather.read_table through Arrow's own
    # default pool: those need the preload library, see test_pool_preload.py.)
    got = {f"{op.__name__[3:]}.{k}": v for op in (op_parquet, op_csv, op_json, op_ipc) for k, v in op(tmp_path).items()}
    for key in ("parquet.back", "csv.back", "csv.streamed", "json.json", "ipc.stream", "ipc.file_lz4"):
        assert zerrow_pool.owns(got[key]), key


def test_explicit_memory_pool_arguments():
    P = zerrow_pool.pool()
    a = pa.array(np.arange(10_000, dtype=np.int64))
    out = [
        pc.add(a, 1, memory_pool=P),
        pc.take(a, pa.array([5, 1, 9999]), memory_pool=P),
        pa.concat_arrays([a, a], memory_pool=P),
        pc.cast(a, pa.float32(), memory_pool=P),
        pa.array([f"x{i}" for i in range(1000)], memory_pool=P),
        a.filter(pc.equal(pc.bit_wise_and(a, 1), 0, memory_pool=P)),
    ]
    for o in out[:5]:
        assert zerrow_pool.owns(o)
    assert out[0][9_999].as_py() == 10_000 and out[1].to_pylist() == [5, 1, 9999]
    assert out[3].type == pa.float32() and out[4][999].as_py() == "x999"
