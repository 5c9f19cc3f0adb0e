"""One operation, once, in this fresh process: the pool's cold start.

    python bench/bench_pool_cold.py OP      # under conftest.bench_env(pool)

Prints one JSON object: the time of the first run of OP (its result freed
inside the timed region, as in bench_pool.py), the process's peak RSS (VmHWM,
which includes memfd pages) and page faults before and after, and the pool's
counters. Inputs are memory-mapped, so the pool has served nothing before OP.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import OPS, load_input, prepare, proc_figures, select_pool, timed  # noqa: E402


def main(op):
    paths = prepare()
    table = load_input(paths[0])
    pool = select_pool()
    before = proc_figures()
    n0 = pool.num_allocations()
    seconds = timed(OPS[op], table, paths)
    after = proc_figures()
    out = {"op": op, "pool": pool.backend_name, "seconds": seconds, "before": before, "after": after,
           "pool_max_memory": pool.max_memory(), "pool_allocations": pool.num_allocations() - n0}
    if pool.backend_name == "zerrow":
        import zerrow_pool

        out["zerrow"] = zerrow_pool.stats()
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
