"""What sandboxes cost (docs/SANDBOX.md).

1. How fast a sandbox starts: fork from the zygote to the node's first instruction,
against starting a fresh worker interpreter (what a fresh process per invocation
would cost without a zygote).

2. The pipeline scenarios of bench_pipeline.py (zerrow transport) with sandboxes on
(isolation "process") and off ("none"): two runtimes side by side, runs alternating
between them (A B B A ...), medians; ratio = on / off (1.0: no cost).

Each sample runs a one-node pipeline under a new name on a one-worker runtime, so
that its slot forks a new sandbox for it; the node returns ``time.perf_counter()``
(CLOCK_MONOTONIC, shared by all processes) on entry, and the zygote reports when it
forked. The baseline starts a worker interpreter (``Worker`` + ``wait_ready``) as the
runtime does.

    python bench/bench_sandbox.py --samples 200 --rows 8000000 --rounds 7
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import pyarrow as pa

from zerrow_pool import demo_data
from zerrow_pool import pipeline as zp
from zerrow_pool.pipeline.demos import taxi_movement, taxi_scan, taxi_zones
from zerrow_pool.pipeline.sandbox import Isolation
from zerrow_pool.pipeline.workers import Worker


@zp.node
def first_instruction():
    return pa.table({"t": [time.perf_counter()]})


@zp.node
def first_instruction_b():  # another pipeline's code: it evicts the other's sandbox
    return pa.table({"t": [time.perf_counter()]})


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def sandbox_starts(samples: int) -> list:
    """One warm sandbox per slot, two pipelines of different code taking turns:
    each run forks a new sandbox."""
    out = []
    os.environ["ZERROW_WARM_SANDBOXES"] = "1"
    try:
        with zp.Runtime(workers=1) as rt:
            for i in range(samples):
                node = (first_instruction, first_instruction_b)[i % 2]
                res = rt.run(zp.Pipeline(f"p{i}", [node]))
                forked = res.report.node(node.name).timing["forked_at"]
                out.append(res[node.name]["t"][0].as_py() - forked)
    finally:
        del os.environ["ZERROW_WARM_SANDBOXES"]
    return out


def interpreter_starts(samples: int) -> list:
    with zp.Runtime(workers=1, isolation="none") as rt:
        out = []
        for i in range(samples):
            t = time.perf_counter()
            w = Worker(1000 + i, rt.transport, Isolation.NONE)
            w.wait_ready()
            out.append(time.perf_counter() - t)
            w.stop()
    return out


def scenarios(data_dir: str) -> dict:
    """name -> (runtime options, pipelines, clear the cache before each run)."""
    mixed = [taxi_zones.build(data_dir=data_dir)]
    return {
        "movement": ({}, [taxi_movement.build(data_dir=data_dir)], False),
        "mixed": ({}, mixed, False),
        "mixed-cold": ({}, mixed, True),
        "fanout-4-dags": ({}, [taxi_scan.build(name=f"scan{i}", data_dir=data_dir)
                               for i in range(4)], False),
        "mixed-budget": ({"budget": True}, mixed, False),
    }


def on_off(data_dir: str, rounds: int, workers: int) -> None:
    for name, (opts, pipes, cold) in scenarios(data_dir).items():
        kw = {"workers": workers}
        if opts.get("budget"):
            with zp.Runtime(**kw) as rt:
                largest = max(n.bytes for n in rt.run(pipes[0], outputs=()).report.nodes)
            kw["memory_budget"] = int(1.5 * largest)
        times = {"process": [], "none": []}
        with zp.Runtime(isolation="process", **kw) as on, zp.Runtime(isolation="none", **kw) as off:
            rts = {"process": on, "none": off}
            for rt in rts.values():
                rt.run_many(pipes, outputs=())  # warm-up: sandboxes, imports, cache
            for i in range(rounds):
                order = ("process", "none") if i % 2 == 0 else ("none", "process")
                for iso in order:
                    if cold and rts[iso].cache:
                        rts[iso].cache.clear()
                    t = time.perf_counter()
                    reps = rts[iso].run_many(pipes, outputs=())
                    times[iso].append(time.perf_counter() - t)
                    assert all(r.ok for r in reps)
        a, b = statistics.median(times["process"]), statistics.median(times["none"])
        print(f"{name:14s} sandbox on {a:6.2f} s   off {b:6.2f} s   on/off {a / b:5.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--interpreter-samples", type=int, default=20)
    ap.add_argument("--rows", type=int, default=0, help="also run the pipelines on/off at this size")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    if a.rows:
        on_off(demo_data.generate(a.rows), a.rounds, a.workers)
    fork = sandbox_starts(a.samples)
    fresh = interpreter_starts(a.interpreter_samples)
    for name, xs in (("sandbox fork to first instruction", fork), ("fresh worker interpreter", fresh)):
        print(f"{name:36s} p50 {statistics.median(xs) * 1e3:8.2f} ms   "
              f"p99 {pct(xs, 0.99) * 1e3:8.2f} ms   (n={len(xs)})")
    print(f"ratio (interpreter p50 / sandbox p50): {statistics.median(fresh) / statistics.median(fork):.0f}x")


if __name__ == "__main__":
    main()
