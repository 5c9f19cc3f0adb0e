"""Warm benchmarks of the memory pools on a 10M-row table (pytest-benchmark).

One process benchmarks one pool (see conftest.select_pool): run it through
``python bench/compare_pools.py``, which starts it once per pool with the right
environment and prints ratios to mimalloc, or by hand, e.g.:

    ARROW_DEFAULT_MEMORY_POOL=jemalloc ZERROW_BENCH_POOL=jemalloc \\
        python -m pytest bench/bench_pool.py -p no:cacheprovider
    ZERROW_BENCH_POOL=zerrow python -m zerrow_pool run -m pytest bench/bench_pool.py  # (or LD_PRELOAD=...)

The result of each operation is dropped inside the timed call, so freeing is
timed too and every round starts from the pool's warm, retained state.
"""

import pytest

from conftest import OPS, make_small_batches, proc_figures, small_alloc_churn, small_batches_compute

ROUNDS = 5


@pytest.mark.parametrize("op", list(OPS))
def test_op(benchmark, bench_pool, table, paths, op):
    fn = OPS[op]
    faults = []

    def run():
        f0 = proc_figures()["minflt"]
        fn(table, paths)
        faults.append(proc_figures()["minflt"] - f0)

    benchmark.group = op
    benchmark.extra_info["pool"] = bench_pool.backend_name
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    # page faults of the timed rounds: a warm pool that keeps its memory takes few
    benchmark.extra_info["minflt_per_round"] = sorted(faults[1:])[len(faults[1:]) // 2]


def test_small_alloc_python(benchmark, bench_pool):
    benchmark.group = "small_alloc_python"
    benchmark.pedantic(small_alloc_churn, args=(bench_pool,), rounds=ROUNDS, warmup_rounds=1)


def test_small_batches_compute(benchmark, bench_pool, table):
    small = make_small_batches(table)
    benchmark.group = "small_batches_compute"
    benchmark.pedantic(small_batches_compute, args=(small,), rounds=ROUNDS, warmup_rounds=1)
