"""Shared pieces of the memory-pool benchmarks: input data, workloads, pool selection.

The pool under test is chosen per *process*, so that Arrow code which ignores
pyarrow's default pool (Acero, Parquet internals) uses it too:

* ``ZERROW_BENCH_POOL=mimalloc|jemalloc|system`` with ``ARROW_DEFAULT_MEMORY_POOL``
  set to the same name (Arrow's own switch for ``arrow::default_memory_pool()``);
* ``ZERROW_BENCH_POOL=zerrow`` under ``LD_PRELOAD=libzerrow_preload.so``.

``bench_env(pool)`` builds that environment; ``compare_pools.py`` uses it to run
``bench_pool.py`` (warm, pytest-benchmark) and ``bench_pool_cold.py`` (one
operation in a fresh process) for each pool.
"""

import os
import time
from pathlib import Path

import pytest

POOLS = ["mimalloc", "jemalloc", "system", "zerrow"]
ROWS = int(os.environ.get("ZERROW_POOL_BENCH_ROWS", 10_000_000))
DATA_DIR = Path(os.environ.get("ZERROW_POOL_BENCH_DIR", "/tmp/zerrow_bench"))


def bench_env(pool, env=None):
    """Environment for a process that benchmarks `pool` end to end."""
    env = dict(os.environ if env is None else env)
    env.pop("LD_PRELOAD", None)
    env["ZERROW_BENCH_POOL"] = pool
    # numpy's OpenBLAS threads spin after start-up: on a 2-core machine they took
    # 10-12% of the CPU from the measured code (perf), so keep them to one.
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    if pool == "zerrow":
        import zerrow_pool

        env.pop("ARROW_DEFAULT_MEMORY_POOL", None)
        env = zerrow_pool.preload_env(env)
    else:
        env["ARROW_DEFAULT_MEMORY_POOL"] = pool
    return env


def select_pool():
    """Makes this process's pool pyarrow's default and checks Arrow's default agrees."""
    import pyarrow as pa

    name = os.environ.get("ZERROW_BENCH_POOL", "mimalloc")
    arrow_default = pa.default_memory_pool().backend_name  # arrow::default_memory_pool() before any override
    if name == "zerrow":
        import zerrow_pool

        pool = zerrow_pool.pool()
        if not zerrow_pool.preload_active:
            raise RuntimeError("zerrow benchmarks need the preload library (bench_env('zerrow'))")
        arrow_default = pa.default_memory_pool().backend_name
    else:
        pool = {"mimalloc": pa.mimalloc_memory_pool, "jemalloc": pa.jemalloc_memory_pool,
                "system": pa.system_memory_pool}[name]()
    if arrow_default != name:
        raise RuntimeError(f"arrow's default pool is {arrow_default}, not {name}: run under bench_env({name!r})")
    pa.set_memory_pool(pool)
    return pool


# ---------------------------------------------------------------- input data

def prepare(rows=ROWS, data_dir=DATA_DIR):
    """Writes (once) the input table as an uncompressed Arrow IPC file, which is
    memory-mapped by every run so that inputs occupy no pool memory, and a
    ~200 MB Parquet file of the same rows. Returns their paths."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    data_dir.mkdir(parents=True, exist_ok=True)
    arrow_path, parquet_path = data_dir / f"input_{rows}.arrow", data_dir / f"input_{rows}.parquet"
    if arrow_path.exists() and parquet_path.exists():
        return arrow_path, parquet_path
    rng = np.random.default_rng(2024)
    ids = pa.array(np.arange(rows, dtype=np.int64))
    keys = pa.array(rng.integers(0, 100_000, rows))
    names = pc.binary_join_element_wise("item-", pc.cast(pa.array(rng.integers(0, 1_000_000, rows)), pa.string()), "")
    t = pa.table({"id": ids, "k": keys, "v": pa.array(rng.normal(size=rows)),
                  "w": pa.array(rng.random(rows).astype(np.float32)), "s": names})
    tmp = arrow_path.with_suffix(".tmp")
    with pa.OSFile(str(tmp), "wb") as f, pa.ipc.new_file(f, t.schema) as w:
        w.write_table(t, max_chunksize=1 << 20)
    tmp.rename(arrow_path)
    tmp = parquet_path.with_suffix(".tmp")
    pq.write_table(t, tmp, row_group_size=1 << 20, compression="snappy")
    tmp.rename(parquet_path)
    return arrow_path, parquet_path


def load_input(arrow_path):
    """The input table, memory-mapped (its buffers come from no pool), every page
    touched once so that mapping the file is not charged to the first operation."""
    import numpy as np
    import pyarrow as pa

    table = pa.ipc.open_file(pa.memory_map(str(arrow_path))).read_all()
    for col in table.columns:
        for chunk in col.chunks:
            for buf in chunk.buffers():
                if buf is not None and buf.size:
                    np.frombuffer(buf, dtype=np.uint8)[::4096].sum()
    return table


# ---------------------------------------------------------------- workloads

def op_build(t, paths):
    import pyarrow as pa
    import pyarrow.compute as pc

    return pa.table({
        "id": pc.add(t["id"], 1), "v": pc.multiply(t["v"], 2.0),
        "s": pc.cast(t["k"], pa.string()), "flag": pc.greater(t["w"], 0.5),
    }).combine_chunks()


def op_sort_take(t, paths):
    import pyarrow.compute as pc

    return t.take(pc.sort_indices(t, [("v", "ascending")]))


def op_filter(t, paths):
    import pyarrow.compute as pc

    return t.filter(pc.greater(t["v"], 0.0))


def op_group_by(t, paths):
    return t.group_by("k").aggregate([("v", "sum"), ("v", "mean"), ("w", "max"), ("id", "count")])


def op_concat_combine(t, paths):
    import pyarrow as pa

    n = t.num_rows
    return pa.concat_tables([t.slice(0, n // 3), t.slice(n // 3, n // 3), t.slice(2 * (n // 3))]).combine_chunks()


def op_parquet_read(t, paths):
    import pyarrow.parquet as pq

    return pq.read_table(paths[1])


OPS = {f.__name__[3:]: f for f in [op_build, op_sort_take, op_filter, op_group_by, op_concat_combine, op_parquet_read]}


# Small allocations: 64 B .. 64 KiB from 2 threads.

SMALL_SIZES = [64 << (i % 11) for i in range(11)]  # 64 B .. 64 KiB


def small_alloc_churn(pool, rounds=4000):
    """Python-level churn: pa.allocate_buffer/free in 2 threads (GIL-bound: it
    mostly measures the interpreter and pyarrow's wrapper, not the pool)."""
    import threading

    import pyarrow as pa

    def work(seed):
        live = []
        for i in range(rounds):
            live.append(pa.allocate_buffer(SMALL_SIZES[(i * 7 + seed) % 11], memory_pool=pool))
            if len(live) > 32:
                del live[(i * 13) % 32]

    threads = [threading.Thread(target=work, args=(s,)) for s in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()


def small_batches_compute(t_small):
    """C++-level churn: a table of 2 000 small batches through a GIL-free kernel
    pipeline on Arrow's 2-thread CPU pool (many 1-64 KiB buffers made and freed)."""
    import pyarrow.compute as pc

    g = t_small.group_by("k").aggregate([("v", "sum"), ("s", "count")])
    m = pc.multiply(t_small["v"], 3.0)  # one small output per chunk
    s = pc.utf8_upper(t_small["s"])
    return g.num_rows + len(m) + len(s)


def make_small_batches(t, batches=2000, rows=1000):
    import pyarrow as pa

    return pa.Table.from_batches(t.slice(0, batches * rows).to_batches(max_chunksize=rows))


# ---------------------------------------------------------------- process figures

def proc_figures():
    """Peak/current RSS, RssShmem and page faults of this process."""
    fig = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmHWM", "VmRSS", "RssShmem", "RssAnon", "RssFile"):
                fig[key] = int(line.split()[1]) * 1024
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    fig["minflt"], fig["majflt"] = int(fields[7]), int(fields[9])
    return fig


def timed(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def bench_pool():
    return select_pool()


@pytest.fixture(scope="session")
def paths():
    return prepare()


@pytest.fixture(scope="session")
def table(paths):
    return load_input(paths[0])
