"""One operation, once, in this fresh process: the pool's cold start.

    python bench/bench_pool_cold.py OP      # under conftest.bench_env(pool)

Prints one JSON object: the time of the first run of OP (its result freed
inside the timed region, as in bench_pool.py), the process's peak RSS (VmHWM,
which includes memfd pages) and page faults before and after, and the pool's
counters. Inputs are memory-mapped, so the pool has served nothing before OP.

    python bench/bench_pool_cold.py --serve

keeps the process (and its pool) for warm runs: it reads one OP per line on
stdin and answers each with one JSON line (seconds, page faults, VmHWM), so
that compare_pools.py can interleave the rounds of all pools and the machine's
changing load falls on every pool alike.
"""

import json
import os
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import OPS, load_input, prepare, proc_figures, select_pool, timed  # noqa: E402


def cpu_seconds():
    """User + system CPU time of this process: steadier than wall time on a busy machine."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def cold(op):
    paths = prepare()
    table = load_input(paths[0])
    pool = select_pool()
    before = proc_figures()
    n0 = pool.num_allocations()
    cpu0 = cpu_seconds()
    seconds = timed(OPS[op], table, paths)
    cpu = cpu_seconds() - cpu0
    after = proc_figures()
    out = {"op": op, "pool": pool.backend_name, "seconds": seconds, "cpu_seconds": cpu, "before": before, "after": after,
           "pool_max_memory": pool.max_memory(), "pool_allocations": pool.num_allocations() - n0}
    if pool.backend_name == "zerrow":
        import zerrow_pool

        out["zerrow"] = zerrow_pool.stats()
    print(json.dumps(out))


def serve():
    from conftest import make_small_batches, small_alloc_churn, small_batches_compute

    paths = prepare()
    table = load_input(paths[0])
    pool = select_pool()
    small = make_small_batches(table)
    ops = {**{op: (lambda f: lambda: f(table, paths))(f) for op, f in OPS.items()},
           "small_alloc_python": lambda: small_alloc_churn(pool),
           "small_batches_compute": lambda: small_batches_compute(small)}
    print(json.dumps({"ready": pool.backend_name}), flush=True)
    for line in sys.stdin:
        op = line.strip()
        f0, cpu0 = proc_figures()["minflt"], cpu_seconds()
        seconds = timed(ops[op])
        cpu = cpu_seconds() - cpu0
        fig = proc_figures()
        print(json.dumps({"op": op, "seconds": seconds, "cpu_seconds": cpu, "minflt": fig["minflt"] - f0,
                          "VmHWM": fig["VmHWM"]}), flush=True)


if __name__ == "__main__":
    serve() if sys.argv[1] == "--serve" else cold(sys.argv[1])
