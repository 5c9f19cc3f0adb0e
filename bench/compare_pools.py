"""Runs the memory-pool suite for every pool and prints time/RSS ratios to mimalloc.

    python bench/compare_pools.py [--cold-reps 3] [--warm-only | --cold-only] [--json out.json]

* warm: ``bench_pool.py`` under pytest-benchmark, one process per pool
  (conftest.bench_env: Arrow's default pool switched by ARROW_DEFAULT_MEMORY_POOL,
  or the zerrow preload), median of 5 rounds after a warm-up round;
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
    return {b["group"]: b["stats"]["median"] for b in data["benchmarks"]}


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
    ap.add_argument("--cold-reps", type=int, default=3)
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
        with tempfile.TemporaryDirectory() as d:
            warm = {p: run_warm(p, d) for p in pools}
        report["warm"] = warm
        values = {op: {p: warm[p][op] for p in pools} for op in [*OPS, *MICRO]}
        text, summary["warm_time"] = ratio_table("Warm time (median of 5 rounds)", values, lambda s: f"{s * 1000:.0f} ms", pools)
        print(text + "\n")
    if not args.warm_only:
        runs = {op: {p: [] for p in pools} for op in OPS}
        for _ in range(args.cold_reps):
            for op in OPS:
                for p in pools:
                    runs[op][p].append(run_cold(p, op))
        report["cold"] = runs
        med = lambda rs, f: statistics.median(f(r) for r in rs)  # noqa: E731
        times = {op: {p: med(runs[op][p], lambda r: r["seconds"]) for p in pools} for op in OPS}
        hwm = {op: {p: med(runs[op][p], lambda r: r["after"]["VmHWM"]) for p in pools} for op in OPS}
        grow = {op: {p: med(runs[op][p], lambda r: r["after"]["VmHWM"] - r["before"]["VmRSS"]) for p in pools} for op in OPS}
        faults = {op: {p: med(runs[op][p], lambda r: r["after"]["minflt"] - r["before"]["minflt"]) for p in pools} for op in OPS}
        mib = lambda b: f"{b / 2**20:.0f} MiB"  # noqa: E731
        for title, vals, fmt, key in [
            (f"Cold time (first run in a fresh process, median of {args.cold_reps})", times, lambda s: f"{s * 1000:.0f} ms", "cold_time"),
            ("Peak RSS of the cold process (VmHWM)", hwm, mib, "peak_rss"),
            ("Peak RSS growth during the operation (VmHWM - VmRSS before)", grow, mib, "peak_rss_growth"),
            ("Minor page faults during the cold operation", faults, lambda n: f"{n:.0f}", "cold_minflt"),
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
