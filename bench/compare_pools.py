"""Runs the memory-pool suite for every pool and prints time/RSS ratios to mimalloc.

    python bench/compare_pools.py [--cold-reps 3] [--warm-only | --cold-only] [--json out.json]

* warm: one long-lived process per pool (``bench_pool_cold.py --serve``, under
  conftest.bench_env: Arrow's default pool switched by ARROW_DEFAULT_MEMORY_POOL,
  or the zerrow preload); the rounds of the pools are interleaved (the order
  rotating), so a change in the machine's load falls on all of them alike;
  median of --rounds after one warm-up round. ``--pytest`` runs
  ``bench_pool.py`` under pytest-benchmark instead, one pool after the other;
* cold: ``bench_pool_cold.py OP``, a fresh process per (pool, op, repetition),
  pools interleaved; median time, median peak RSS (VmHWM, memfd pages
  included) and the peak's growth during the operation.

Ratios are pool / mimalloc, measured in the same run; the geometric means are
over the six compute operations (the small-allocation rows are reported apart).
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from conftest import OPS, POOLS, bench_env, prepare  # noqa: E402

MICRO = ["small_alloc_python", "small_batches_compute"]


def run_warm(pool, out_dir):
    out = os.path.join(out_dir, f"warm_{pool}.json")
    cmd = [sys.executable, "-m", "pytest", os.path.join(HERE, "bench_pool.py"), "-q", "-p", "no:cacheprovider",
           f"--benchmark-json={out}", "--benchmark-disable-gc", "--rootdir", HERE]
    subprocess.run(cmd, env=bench_env(pool), check=True, cwd=HERE, stdout=subprocess.DEVNULL)
    with open(out) as f:
        data = json.load(f)
    return ({b["group"]: b["stats"]["median"] for b in data["benchmarks"]},
            {b["group"]: b["extra_info"]["minflt_per_round"] for b in data["benchmarks"] if "minflt_per_round" in b["extra_info"]})


def run_warm_interleaved(pools, rounds):
    """Median time and page faults per (op, pool), rounds interleaved across pools."""
    workers = {}
    for p in pools:
        workers[p] = subprocess.Popen([sys.executable, os.path.join(HERE, "bench_pool_cold.py"), "--serve"],
                                      env=bench_env(p), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert json.loads(workers[p].stdout.readline())["ready"] == p
    times = {op: {p: [] for p in pools} for op in [*OPS, *MICRO]}
    cpu = {op: {p: [] for p in pools} for op in [*OPS, *MICRO]}
    faults = {op: {p: [] for p in pools} for op in [*OPS, *MICRO]}
    hwm = {}
    try:
        for op in times:
            for r in range(rounds + 1):
                order = pools[r % len(pools):] + pools[:r % len(pools)]
                for p in order:
                    workers[p].stdin.write(op + "\n")
                    workers[p].stdin.flush()
                    res = json.loads(workers[p].stdout.readline())
                    if r > 0:  # round 0 warms the pool up
                        times[op][p].append(res["seconds"])
                        cpu[op][p].append(res["cpu_seconds"])
                        faults[op][p].append(res["minflt"])
                    hwm[p] = res["VmHWM"]
    finally:
        for w in workers.values():
            w.stdin.close()
            w.wait()
    return ({p: {op: statistics.median(times[op][p]) for op in times} for p in pools},
            {p: {op: statistics.median(faults[op][p]) for op in times} for p in pools}, hwm,
            {p: {op: statistics.median(cpu[op][p]) for op in times} for p in pools})


def run_cold(pool, op):
    out = subprocess.run([sys.executable, os.path.join(HERE, "bench_pool_cold.py"), op], env=bench_env(pool),
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def geomean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def ratio_table(title, values, unit_fmt, pools):
    """values[op][pool] -> number; a Markdown table of mimalloc's value and each pool's ratio."""
    lines = [f"**{title}**", "", "| op | mimalloc | " + " | ".join(f"{p} / mimalloc" for p in pools[1:]) + " |",
             "|---|---|" + "---|" * (len(pools) - 1)]
    ratios = {p: [] for p in pools[1:]}
    for op, row in values.items():
        cells = []
        for p in pools[1:]:
            r = row[p] / row["mimalloc"]
            if op not in MICRO:
                ratios[p].append(r)
            cells.append(f"{r:.2f}")
        lines.append(f"| {op} | {unit_fmt(row['mimalloc'])} | " + " | ".join(cells) + " |")
    lines.append("| **geomean (6 ops)** | | " + " | ".join(f"**{geomean(ratios[p]):.2f}**" for p in pools[1:]) + " |")
    return "\n".join(lines), {p: geomean(v) for p, v in ratios.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cold-reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pytest", action="store_true", help="warm runs through pytest-benchmark, pool after pool")
    ap.add_argument("--warm-only", action="store_true")
    ap.add_argument("--cold-only", action="store_true")
    ap.add_argument("--pools", default=",".join(POOLS))
    ap.add_argument("--json")
    args = ap.parse_args()
    pools = args.pools.split(",")
    assert pools[0] == "mimalloc", "ratios are to mimalloc: list it first"
    prepare()
    report, summary = {}, {}
    if not args.cold_only:
        if args.pytest:
            with tempfile.TemporaryDirectory() as d:
                per_pool = {p: run_warm(p, d) for p in pools}
            warm = ({p: v[0] for p, v in per_pool.items()}, {p: v[1] for p, v in per_pool.items()}, {})
            how = "pytest-benchmark, median of 5 rounds, one pool after the other"
        else:
            warm = run_warm_interleaved(pools, args.rounds)
            how = f"median of {args.rounds} rounds, interleaved across pools"
        report["warm"] = warm
        values = {op: {p: warm[0][p][op] for p in pools} for op in [*OPS, *MICRO]}
        text, summary["warm_time"] = ratio_table(f"Warm time ({how})", values, lambda s: f"{s * 1000:.0f} ms", pools)
        print(text + "\n")
        if len(warm) > 3:  # CPU time (all threads): the steadier figure when the machine is busy
            values = {op: {p: warm[3][p][op] for p in pools} for op in [*OPS, *MICRO]}
            text, summary["warm_cpu"] = ratio_table("Warm CPU time (user + system)", values, lambda s: f"{s * 1000:.0f} ms", pools)
            print(text + "\n")
        print("Minor page faults per warm round (median):\n")
        print("| op | " + " | ".join(pools) + " |\n|---|" + "---|" * len(pools))
        for op in OPS:
            print(f"| {op} | " + " | ".join(f"{warm[1][p].get(op, 0):.0f}" for p in pools) + " |")
        print()
        if warm[2]:
            print("Peak RSS of the warm process over all its rounds (VmHWM): " + ", ".join(
                f"{p} {warm[2][p] / 2**20:.0f} MiB ({warm[2][p] / warm[2]['mimalloc']:.2f})" for p in pools) + "\n")
    if not args.warm_only:
        runs = {op: {p: [] for p in pools} for op in OPS}
        for _ in range(args.cold_reps):
            for op in OPS:
                for p in pools:
                    runs[op][p].append(run_cold(p, op))
        report["cold"] = runs
        med = lambda rs, f: statistics.median(f(r) for r in rs)  # noqa: E731
        times = {op: {p: med(runs[op][p], lambda r: r["seconds"]) for p in pools} for op in OPS}
        cpu = {op: {p: med(runs[op][p], lambda r: r["cpu_seconds"]) for p in pools} for op in OPS}
        hwm = {op: {p: med(runs[op][p], lambda r: r["after"]["VmHWM"]) for p in pools} for op in OPS}
        grow = {op: {p: med(runs[op][p], lambda r: r["after"]["VmHWM"] - r["before"]["VmRSS"]) for p in pools} for op in OPS}
        faults = {op: {p: med(runs[op][p], lambda r: r["after"]["minflt"] - r["before"]["minflt"]) for p in pools} for op in OPS}
        mib = lambda b: f"{b / 2**20:.0f} MiB"  # noqa: E731
        for title, vals, fmt, key in [
            (f"Cold time (first run in a fresh process, median of {args.cold_reps})", times, lambda s: f"{s * 1000:.0f} ms", "cold_time"),
            ("Cold CPU time (user + system, all threads)", cpu, lambda s: f"{s * 1000:.0f} ms", "cold_cpu"),
            ("Peak RSS of the cold process (VmHWM)", hwm, mib, "peak_rss"),
            ("Peak RSS growth during the operation (VmHWM - VmRSS before)", grow, mib, "peak_rss_growth"),
            # Pages the pool populates in bulk (MADV_POPULATE_WRITE) count as minor faults too,
            # though they take no trap: `perf stat -e page-faults` counts traps alone.
            ("Minor page faults during the cold operation (bulk-populated pages included)", faults,
             lambda n: f"{n:.0f}", "cold_minflt"),
        ]:
            text, summary[key] = ratio_table(title, vals, fmt, pools)
            print(text + "\n")
    report["summary"] = summary
    print("summary:", json.dumps(summary))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
