"""Whole `zerrow run` processes as users run them: first run ever and second run, zerrow vs copy.

For each repetition, pipeline and transport (transports interleaved, order alternating):
a fresh service directory (so no service runs: the first run ever starts one), then
  cold  `zerrow run examples/PIPE.py --transport T` timed as a whole process,
  warm  the same command again (the service, its workers and decode cache now warm),
then the service is stopped. Ratios are copy's median time over zerrow's, per pipeline,
and zerrow's median peak memory over copy's, three ways:
  ``peak_held``    the run's report: shared memory behind live intermediates and cache entries
                   (for the copy transport its IPC files; its workers' private heaps are not in it);
  ``peak_pinned``  the same without cached decodes that no run was reading;
  ``machine``      what the machine paid (zerrow_pool/pipeline/machine_memory.py): the peak,
                   sampled while the command runs, of every process's private and shared memory
                   (client, service, workers, sandboxes) above its value before the first run,
                   when no service was running; what the service keeps between runs is in it.

    python bench/bench_cli.py --rows 8000000 --reps 3
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from zerrow_pool.pipeline.machine_memory import PeakSampler, machine_memory

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PIPELINES = {"mixed": "examples/taxi_zones.py", "movement": "examples/taxi_movement.py"}


def zerrow(args, env):
    """Wall time of one CLI process and the machine's peak memory while it ran."""
    cmd = [sys.executable, "-m", "zerrow_pool.cli", *args]
    with PeakSampler() as sampler:
        t = time.monotonic()
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        wall = time.monotonic() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return wall, sampler.peak


def one_pair(pipeline, transport, workers, data_dir):
    svc = tempfile.mkdtemp(prefix="zsvc-bench-")
    env = {**os.environ, "ZERROW_SERVICE_DIR": svc, "ZERROW_DEMO_DIR": data_dir}
    out = {}
    try:
        baseline = machine_memory()  # no service of this directory runs yet
        for attempt in ("cold", "warm"):
            rep = os.path.join(svc, f"{attempt}.json")
            wall, peak = zerrow(["run", PIPELINES[pipeline], "-q", "--workers", str(workers),
                                 "--transport", transport, "--json", rep], env)
            with open(rep) as f:
                r = json.load(f)
            out[attempt] = {"wall_s": wall, "run_s": r["wall_s"], "peak_held": r["peak_held"],
                            "peak_pinned": r["peak_pinned"], "machine": peak - baseline}
        out["idle"] = machine_memory() - baseline  # what the service keeps between runs
    finally:
        subprocess.run([sys.executable, "-m", "zerrow_pool.cli", "service", "stop"], env=env,
                       capture_output=True)
        shutil.rmtree(svc, ignore_errors=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=8_000_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--pipelines", default="mixed,movement")
    ap.add_argument("--json", help="write the raw samples and ratios here")
    args = ap.parse_args(argv)
    from zerrow_pool import demo_data

    data_dir = demo_data.dataset_dir(args.rows, "snappy")
    if not demo_data.is_complete(data_dir):
        print(f"generating {args.rows:,} rows into {data_dir}", flush=True)
        demo_data.generate(args.rows, data_dir)
    samples = {p: {"zerrow": [], "copy": []} for p in args.pipelines.split(",")}
    for rep in range(args.reps):
        for pipeline in samples:
            order = ("zerrow", "copy") if rep % 2 == 0 else ("copy", "zerrow")
            for transport in order:
                s = one_pair(pipeline, transport, args.workers, data_dir)
                samples[pipeline][transport].append(s)
                print(f"rep {rep} {pipeline:8} {transport:6} cold {s['cold']['wall_s']:6.2f}s "
                      f"warm {s['warm']['wall_s']:6.2f}s  peak held cold "
                      f"{s['cold']['peak_held'] / 2**30:.2f} GiB warm "
                      f"{s['warm']['peak_held'] / 2**30:.2f} GiB  machine cold "
                      f"{s['cold']['machine'] / 2**30:.2f} GiB warm {s['warm']['machine'] / 2**30:.2f} GiB "
                      f"idle {s['idle'] / 2**30:.2f} GiB", flush=True)
    ratios = {}
    print(f"\nmedians of {args.reps} (rows {args.rows:,}, {args.workers} workers); "
          "speed = copy time / zerrow time, memory = zerrow peak held / copy's")
    for pipeline, by in samples.items():
        keys = ("wall_s", "peak_held", "peak_pinned", "machine")
        med = {t: {a: {k: statistics.median(s[a][k] for s in by[t]) for k in keys}
                   for a in ("cold", "warm")} for t in by}
        r = {a: {"speed": med["copy"][a]["wall_s"] / med["zerrow"][a]["wall_s"],
                 "memory": med["zerrow"][a]["peak_held"] / max(1, med["copy"][a]["peak_held"]),
                 "pinned": med["zerrow"][a]["peak_pinned"] / max(1, med["copy"][a]["peak_pinned"]),
                 "machine": med["zerrow"][a]["machine"] / max(1, med["copy"][a]["machine"])}
             for a in ("cold", "warm")}
        ratios[pipeline] = {"medians": med, "ratios": r}
        for a in ("cold", "warm"):
            print(f"  {pipeline:8} {a}: zerrow {med['zerrow'][a]['wall_s']:6.2f}s  copy "
                  f"{med['copy'][a]['wall_s']:6.2f}s  speed {r[a]['speed']:.2f}x  "
                  f"memory held {r[a]['memory']:.2f}x (pinned by the run {r[a]['pinned']:.2f}x; "
                  f"machine {med['zerrow'][a]['machine'] / 2**30:.2f} vs {med['copy'][a]['machine'] / 2**30:.2f} GiB, "
                  f"{r[a]['machine']:.2f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": args.rows, "workers": args.workers, "samples": samples,
                       "summary": ratios}, f, indent=1)


if __name__ == "__main__":
    main()
