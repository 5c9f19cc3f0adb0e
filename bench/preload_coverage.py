"""Which bytes land in zerrow memory, per operation, with and without the preload library.

Each operation runs inside ``zerrow_pool.scope()`` in a fresh interpreter, once
plainly and once under ``LD_PRELOAD=libzerrow_preload.so``. For each we record
whether the result lies entirely in zerrow memory (``owns``), how many of the
result's bytes do, and how many bytes the operation allocated from the zerrow
pool versus from Arrow's stock default pool (mimalloc) meanwhile.

    python bench/preload_coverage.py            # prints the Markdown table
    python bench/preload_coverage.py --json     # machine-readable, used by tests
"""

import json
import os
import subprocess
import sys
import tempfile

ROWS = 200_000


def _ops(tmp):
    """name -> (description, callable returning an Arrow object or ndarray)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.acero as ac
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    import pyarrow.dataset as ds
    import pyarrow.feather as feather
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    t = pa.table({
        "k": pa.array(rng.integers(0, 1000, ROWS)),
        "v": pa.array(rng.normal(size=ROWS)),
        "s": pa.array([f"s{i % 5000}" for i in range(ROWS)]),
    })
    pq.write_table(t, f"{tmp}/t.parquet", row_group_size=20_000)
    pacsv.write_csv(t, f"{tmp}/t.csv")
    feather.write_feather(t, f"{tmp}/t.feather", compression="uncompressed")
    feather.write_feather(t, f"{tmp}/t_lz4.feather", compression="lz4")
    with pa.OSFile(f"{tmp}/t.arrows", "wb") as f, pa.ipc.new_file(f, t.schema) as w:
        w.write_table(t, max_chunksize=50_000)
    right = pa.table({"k": pa.array(np.arange(1000)), "name": [f"n{i}" for i in range(1000)]})
    chunked = pa.chunked_array([t["v"].slice(0, ROWS // 2), t["v"].slice(ROWS // 2)])
    decl = ac.Declaration.from_sequence([
        ac.Declaration("table_source", ac.TableSourceNodeOptions(t)),
        ac.Declaration("filter", ac.FilterNodeOptions(pc.field("v") > 0)),
        ac.Declaration("project", ac.ProjectNodeOptions([pc.field("k"), pc.multiply(pc.field("v"), 2)], ["k", "v2"])),
    ])
    return {
        "compute.sort_take": ("`t.take(pc.sort_indices(t, ...))`", lambda: t.take(pc.sort_indices(t, [("s", "ascending")]))),
        "compute.filter": ("`t.filter(pc.field('v') > 0)` (Table.filter, Acero)", lambda: t.filter(pc.field("v") > 0)),
        "compute.filter_mask": ("`t.filter(mask)` with a boolean array", lambda: t.filter(pc.greater(t["v"], 0))),
        "concat_tables": ("`pa.concat_tables([t, t]).combine_chunks()`", lambda: pa.concat_tables([t, t]).combine_chunks()),
        "group_by": ("`t.group_by('k').aggregate(...)`", lambda: t.group_by("k").aggregate([("v", "sum"), ("s", "count")])),
        "join": ("`t.join(right, 'k')`", lambda: t.join(right, "k")),
        "acero.to_table": ("`Declaration(filter+project).to_table()`", lambda: decl.to_table()),
        "parquet.read_table": ("`pq.read_table(path)`", lambda: pq.read_table(f"{tmp}/t.parquet")),
        "parquet.filtered": ("`pq.read_table(path, filters=...)`", lambda: pq.read_table(f"{tmp}/t.parquet", filters=[("k", "<", 500)])),
        "parquet.ParquetFile": ("`pq.ParquetFile(path).read()`", lambda: pq.ParquetFile(f"{tmp}/t.parquet").read()),
        "dataset.to_table": ("`ds.dataset(path).to_table()`", lambda: ds.dataset(f"{tmp}/t.parquet").to_table()),
        "dataset.filtered": ("`ds.dataset(path).to_table(filter=...)`", lambda: ds.dataset(f"{tmp}/t.parquet").to_table(filter=pc.field("k") < 500)),
        "csv.read_csv": ("`pacsv.read_csv(path)`", lambda: pacsv.read_csv(f"{tmp}/t.csv")),
        "feather.read_table": ("`feather.read_table(path)`", lambda: feather.read_table(f"{tmp}/t.feather", memory_map=False)),
        "feather.lz4": ("`feather.read_table(lz4 file)`", lambda: feather.read_table(f"{tmp}/t_lz4.feather")),
        "ipc.read_all": ("`pa.ipc.open_file(OSFile).read_all()`", lambda: pa.ipc.open_file(pa.OSFile(f"{tmp}/t.arrows")).read_all()),
        "to_numpy": ("`chunked_array.to_numpy()` (2 chunks)", lambda: chunked.to_numpy()),
        "to_pandas": ("`t.to_pandas()` (column `v`)", lambda: t.to_pandas()["v"].to_numpy()),
    }


def _buffers(obj):
    import pyarrow as pa

    if isinstance(obj, pa.Table):
        arrays = [c for col in obj.columns for c in col.chunks]
    elif isinstance(obj, pa.ChunkedArray):
        arrays = list(obj.chunks)
    else:
        arrays = [obj]
    out, stack = {}, list(arrays)
    while stack:
        a = stack.pop()
        for b in a.buffers():
            if b is not None and b.size:
                out[b.address] = b
        if isinstance(a, pa.DictionaryArray):
            stack.append(a.dictionary)
    return list(out.values())


def child():
    """Runs every operation in this process and prints one JSON list."""
    import numpy as np
    import pyarrow as pa

    import zerrow_pool

    stock = pa.mimalloc_memory_pool()  # Arrow's own default pool (same object as arrow::default_memory_pool())
    zpool = zerrow_pool.pool()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ops = _ops(tmp)
        for name, (desc, fn) in ops.items():
            fn()  # warm up (lazy initialisation, thread pools)
            z0, s0 = zpool.total_bytes_allocated(), stock.total_bytes_allocated()
            with zerrow_pool.scope():
                result = fn()
            z1, s1 = zpool.total_bytes_allocated(), stock.total_bytes_allocated()
            if isinstance(result, np.ndarray):
                bufs = [pa.py_buffer(result)]
                owned = zerrow_pool.owns(pa.foreign_buffer(result.ctypes.data, result.nbytes, base=result))
                zbytes = result.nbytes if owned else 0
            else:
                bufs = _buffers(result)
                owned = zerrow_pool.owns(result)
                zbytes = sum(b.size for b in bufs if zerrow_pool.owns(b))
            rows.append({
                "op": name, "desc": desc, "owned": bool(owned),
                "result_bytes": sum(b.size for b in bufs), "result_zerrow_bytes": zbytes,
                "zerrow_alloc": z1 - z0, "stock_alloc": s1 - s0,
            })
    print(json.dumps({"preload_active": zerrow_pool.preload_active, "rows": rows}))


def run(preload):
    """Runs the operations in a fresh interpreter, with or without the preload library."""
    import zerrow_pool

    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if preload:
        env = zerrow_pool.preload_env(env)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child"], env=env,
                         capture_output=True, text=True, check=True, timeout=300)
    return json.loads(out.stdout)


def _mib(n):
    return f"{n / 2**20:.1f}"


def table(plain, preloaded):
    lines = [
        "| operation | without preload: owns | result bytes in zerrow | allocated zerrow / stock MiB "
        "| with preload: owns | result bytes in zerrow | allocated zerrow / stock MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for a, b in zip(plain["rows"], preloaded["rows"]):
        def cells(r):
            frac = r["result_zerrow_bytes"] / r["result_bytes"] if r["result_bytes"] else 1.0
            return [("yes" if r["owned"] else "**no**"), f"{frac:.0%} of {_mib(r['result_bytes'])} MiB",
                    f"{_mib(r['zerrow_alloc'])} / {_mib(r['stock_alloc'])}"]
        lines.append("| " + " | ".join([f"{a['op']}: {a['desc']}", *cells(a), *cells(b)]) + " |")
    return "\n".join(lines)


def main():
    if "--child" in sys.argv:
        child()
        return
    plain, preloaded = run(False), run(True)
    assert not plain["preload_active"] and preloaded["preload_active"]
    if "--json" in sys.argv:
        print(json.dumps({"plain": plain, "preload": preloaded}))
    else:
        print(table(plain, preloaded))


if __name__ == "__main__":
    main()
