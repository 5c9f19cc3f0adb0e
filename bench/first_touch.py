"""What fresh memory costs on this machine, per GiB: every way to get it, next to
what the zerrow pool achieves for a large fresh allocation written whole.

    python bench/first_touch.py [--size-mib 512] [--repeat 7] [--reserve-hugetlb]

Each figure is the time to get N fresh bytes and write every byte once (memset),
median of --repeat, rounds interleaved across the ways so that a change in the
machine's load falls on all of them. Both wall time and the CPU time of the
writing thread are printed: on a busy machine the CPU time is the steadier one.

* anon, anon_thp: anonymous memory, 4 KiB pages / advised MADV_HUGEPAGE (what
  mimalloc and jemalloc get);
* memfd: a fresh memfd faulted in page by page as it is written;
* memfd_populate, memfd_fallocate: populated in one call first;
* memfd_hugetlb: MFD_HUGETLB (needs free hugetlb pages: --reserve-hugetlb
  reserves them for the run, as root, and restores the previous count);
* warm: the same memfd written a second time (what reuse costs);
* pool, pool_no_populate: ``pa.allocate_buffer(N, memory_pool=zerrow_pool.pool())``
  written whole, in a process whose pool has no resident memory to reuse
  (``release_unused()`` between rounds), with and without bulk population.

The raw measurements are zerrow_pool.doctor's (``zerrow doctor`` runs a short
version of this).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

from zerrow_pool import doctor

RAW = ["anon", "anon_thp", "memfd", "memfd_populate", "memfd_fallocate", "memfd_hugetlb", "warm"]
POOL = {"pool": {}, "pool_no_populate": {"ZERROW_POPULATE_MIN": "0"}}
NR_HUGEPAGES = "/proc/sys/vm/nr_hugepages"

POOL_CHILD = """
import json, sys, time
import numpy as np
import pyarrow as pa
import zerrow_pool

n, repeat = int(sys.argv[1]), int(sys.argv[2])
pool = zerrow_pool.pool()
out = []
for _ in range(repeat):
    zerrow_pool.release_unused()
    w0, c0 = time.perf_counter(), time.thread_time()
    buf = pa.allocate_buffer(n, memory_pool=pool)
    np.frombuffer(buf, dtype=np.uint8)[:] = 1
    out.append((time.perf_counter() - w0, time.thread_time() - c0))
    del buf
print(json.dumps(out))
"""


def raw_round(kind, n):
    """(wall, cpu) seconds of one fresh write, or None when the way is unavailable."""
    try:
        return doctor.write_fresh(kind, n)
    except OSError:
        return None


def pool_rounds(env_extra, n, repeat):
    env = dict(os.environ, **env_extra)
    out = subprocess.run([sys.executable, "-c", POOL_CHILD, str(n), str(repeat)], env=env,
                         capture_output=True, text=True, check=True)
    return [tuple(x) for x in json.loads(out.stdout)]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mib", type=int, default=512)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--reserve-hugetlb", action="store_true",
                   help="as root: reserve enough 2 MiB hugetlb pages for the run, restore the count after")
    args = p.parse_args()
    n = args.size_mib << 20
    saved = None
    if args.reserve_hugetlb:
        with open(NR_HUGEPAGES) as f:
            saved = f.read().strip()
        with open(NR_HUGEPAGES, "w") as f:
            f.write(str(int(saved) + n // doctor.HUGE_2M))
    try:
        results = {k: [] for k in [*RAW, *POOL]}
        for r in range(args.repeat):
            order = RAW[r % len(RAW):] + RAW[:r % len(RAW)]
            for kind in order:
                got = raw_round(kind, n)
                if got is not None:
                    results[kind].append(got)
        for name, env in POOL.items():  # a process each: the pool reads its settings once
            results[name] = pool_rounds(env, n, args.repeat)
    finally:
        if saved is not None:
            with open(NR_HUGEPAGES, "w") as f:
                f.write(saved)
    gib = (1 << 30) / n
    print(f"fresh memory, {args.size_mib} MiB written whole, median of {args.repeat}, per GiB:")
    for kind, rounds in results.items():
        if not rounds:
            print(f"  {kind:18} unavailable")
            continue
        wall = statistics.median(w for w, _ in rounds) * gib
        cpu = statistics.median(c for _, c in rounds) * gib
        print(f"  {kind:18} wall {wall:6.3f} s   cpu {cpu:6.3f} s")


if __name__ == "__main__":
    main()
