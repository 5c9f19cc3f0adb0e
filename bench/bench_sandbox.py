"""How fast a sandbox starts: fork from the zygote to the node's first instruction,
against starting a fresh worker interpreter (what a fresh process per invocation
would cost without a zygote).

Each sample runs a one-node pipeline under a new name on a one-worker runtime, so
that its slot forks a new sandbox for it; the node returns ``time.perf_counter()``
(CLOCK_MONOTONIC, shared by all processes) on entry, and the zygote reports when it
forked. The baseline starts a worker interpreter (``Worker`` + ``wait_ready``) as the
runtime does.

    python bench/bench_sandbox.py --samples 200
"""
from __future__ import annotations

import argparse
import statistics
import time

import pyarrow as pa

from zerrow_pool import pipeline as zp
from zerrow_pool.pipeline.sandbox import Isolation
from zerrow_pool.pipeline.workers import Worker


@zp.node
def first_instruction():
    return pa.table({"t": [time.perf_counter()]})


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def sandbox_starts(samples: int) -> list:
    out = []
    with zp.Runtime(workers=1) as rt:
        for i in range(samples):
            res = rt.run(zp.Pipeline(f"p{i}", [first_instruction]))
            forked = res.report.node("first_instruction").timing["forked_at"]
            out.append(res["first_instruction"]["t"][0].as_py() - forked)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--interpreter-samples", type=int, default=20)
    a = ap.parse_args()
    fork = sandbox_starts(a.samples)
    fresh = interpreter_starts(a.interpreter_samples)
    for name, xs in (("sandbox fork to first instruction", fork), ("fresh worker interpreter", fresh)):
        print(f"{name:36s} p50 {statistics.median(xs) * 1e3:8.2f} ms   "
              f"p99 {pct(xs, 0.99) * 1e3:8.2f} ms   (n={len(xs)})")
    print(f"ratio (interpreter p50 / sandbox p50): {statistics.median(fresh) / statistics.median(fork):.0f}x")


if __name__ == "__main__":
    main()
