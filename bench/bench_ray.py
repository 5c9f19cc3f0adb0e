"""zerrow on Ray against plain Ray tasks, and against zerrow's local runtime.

    flock /tmp/zerrow-bench.lock python bench/bench_ray.py [--rows 8000000] [--rounds 3]

Over the demo dataset (``zerrow demo`` makes it; ``--rows`` picks its size), on the
mixed (taxi_zones) and data-movement (taxi_movement) pipelines, warm runtimes, the
median time of ``--rounds`` runs after one warm-up run, the modes taken in turn
round by round, per mode:

- ``local``: zerrow's local runtime (``Runtime(workers=N)``);
- ``zerrow-ray``: ``Runtime(ray=...)`` on a one-node Ray instance started here: one
  agent holding a local runtime with N workers; sink tables come back through Ray;
- ``zerrow-ray-nocache``: the same, the decode cache off;
- ``ray-tasks``: what a Ray user writes today: every source and node one Ray task
  (the same node functions), tables passed as ObjectRefs, sources read with
  ``pyarrow.dataset`` in their task;
- ``compute only``: the node functions run one after another in this process on
  inputs already in memory (no transport, no decode, no scheduling): what bounds
  any runtime, so ``ray-tasks`` / ``compute only`` is the ceiling of the ratio
  ``ray-tasks`` / ``zerrow-ray`` on this machine.

Fairness: Ray starts its workers at nice 15 with OMP_NUM_THREADS=1 (Arrow sizes its
thread pool from it). Here RAY_worker_niceness=0, and both the plain tasks and the
agents get OMP_NUM_THREADS=N (the agent sets it for its workers itself); the local
runtime runs at this process's niceness. Results must be equal across modes.

Then a simulated 2-node cluster (``ray.cluster_utils.Cluster``) runs the mixed
pipeline with steps pinned to both nodes: the bytes the report says moved between
machines must equal exactly the bytes of the edges whose ends ran on different
machines, and the local edges must have copied nothing.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time

os.environ.setdefault("RAY_worker_niceness", "0")

import pyarrow.dataset as pads  # noqa: E402
import ray  # noqa: E402

from zerrow_pool import demo_data  # noqa: E402
from zerrow_pool import pipeline as zp  # noqa: E402
from zerrow_pool.pipeline.demos import taxi_movement, taxi_zones  # noqa: E402

PIPELINES = {"mixed": taxi_zones, "movement": taxi_movement}
PINS = {"trips": "m_a", "zones": "m_b", "hourly": "m_b"}  # forces cross-machine edges


# ------------------------------------------------------------- plain Ray tasks
@ray.remote
def _read(files, columns, filt):
    return pads.dataset(files, format="parquet").to_table(columns=columns, filter=filt)


@ray.remote
def _call(fn, *tables):
    return fn(*tables)


def ray_tasks_run(pipeline, threads: int) -> dict:
    """The pipeline as plain Ray tasks; returns its sink tables."""
    env = {"runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(threads)}}}
    refs = {}
    for s in pipeline.order:
        if s.kind == "source":
            refs[s.name] = _read.options(**env).remote(s.files(), s.columns, s.filter)
        else:
            refs[s.name] = _call.options(**env).remote(s.fn, *[refs[u] for u in s.inputs])
    sinks = [refs[n] for n in pipeline.sinks]
    del refs  # pending tasks keep their arguments alive; Ray frees each as its consumers finish
    return dict(zip(pipeline.sinks, ray.get(sinks)))


# ------------------------------------------------- the node functions' own compute
def compute_only(pipeline, rounds: int) -> dict:
    """The node functions run in this process on inputs already in memory (sources
    read once, untimed): no transport, no decode, no scheduling. Medians over
    ``rounds`` of their summed wall and CPU time, per node, the longest chain of
    nodes, and the least time any schedule on this machine's cores could take:
    the longest chain, or all the CPU time spread over every core."""
    tables = {s.name: pads.dataset(s.files(), format="parquet").to_table(columns=s.columns, filter=s.filter)
              for s in pipeline.order if s.kind == "source"}
    nodes = [s for s in pipeline.order if s.kind != "source"]
    wall = {s.name: [] for s in nodes}
    cpu = {s.name: [] for s in nodes}
    for _ in range(rounds + 1):  # the first round warms up
        outs = dict(tables)
        for s in nodes:
            c0, t0 = time.process_time(), time.perf_counter()
            outs[s.name] = s.fn(*[outs[u] for u in s.inputs])
            wall[s.name].append(time.perf_counter() - t0)
            cpu[s.name].append(time.process_time() - c0)
    med = {n: statistics.median(t[1:]) for n, t in wall.items()}
    chain = {}  # longest path of node time ending at each step
    for s in pipeline.order:
        chain[s.name] = med.get(s.name, 0.0) + max((chain[u] for u in getattr(s, "inputs", ())), default=0.0)
    total = statistics.median(sum(t[i] for t in wall.values()) for i in range(1, rounds + 1))
    cpu_total = statistics.median(sum(t[i] for t in cpu.values()) for i in range(1, rounds + 1))
    critical = max(chain.values())
    return {"median_s": total, "cpu_s": cpu_total, "per_node_s": med, "critical_path_s": critical,
            "least_s": max(critical, cpu_total / (os.cpu_count() or 1))}


# ---------------------------------------------------------------------- modes
def interleaved(modes: dict, rounds: int):
    """Per mode: seconds of ``rounds`` timed runs, taken round-robin over the modes
    (so that a busy moment of the machine hits them alike), and the last outputs."""
    secs = {m: [] for m in modes}
    outs = {m: run() for m, run in modes.items()}  # warm-up: imports, page cache, decode cache
    for _ in range(rounds):
        for m, run in modes.items():
            t0 = time.perf_counter()
            outs[m] = run()
            secs[m].append(time.perf_counter() - t0)
    return secs, outs


def same(a: dict, b: dict) -> bool:
    for name in b:
        x, y = a[name], b[name]
        if x.schema != y.schema or x.num_rows != y.num_rows:
            return False
        for col in y.column_names:
            u, v = x[col].to_pylist(), y[col].to_pylist()
            if any(not (p == q or (isinstance(q, float) and math.isclose(p, q, rel_tol=1e-9)))
                   for p, q in zip(u, v)):
                return False
    return True


def nice_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])


def single_node(data: str, workers: int, rounds: int) -> dict:
    out = {}
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
             object_store_memory=int(os.environ.get("ZERROW_BENCH_STORE", 4 * 2**30)))
    try:
        with zp.Runtime(workers=workers) as local, \
                zp.Runtime(ray="auto", workers=workers) as on_ray, \
                zp.Runtime(ray="auto", workers=workers, cache=False) as on_ray_nocache:
            agent_pid = ray.get(next(iter(on_ray.agents.values())).describe.remote())["pid"]
            out["agent_nice"] = nice_of(agent_pid)
            for name, mod in PIPELINES.items():
                p = mod.build(data_dir=data)
                modes = {
                    "local": lambda: local.run(p).outputs,
                    "zerrow-ray": lambda: on_ray.run(p).outputs,
                    "zerrow-ray-nocache": lambda: on_ray_nocache.run(p).outputs,
                    "ray-tasks": lambda: ray_tasks_run(p, workers),
                }
                secs, outs = interleaved(modes, rounds)
                res = {}
                for mode in modes:
                    res[mode] = {"seconds": secs[mode], "median_s": statistics.median(secs[mode]),
                                 "equal": same(outs[mode], outs["local"])}
                    print(f"{name:9} {mode:19} median {res[mode]['median_s']:.2f}s  "
                          f"{[round(x, 2) for x in secs[mode]]}", flush=True)
                med = {m: res[m]["median_s"] for m in modes}
                res["compute"] = compute_only(p, rounds)
                c = res["compute"]
                res["ceiling"] = med["ray-tasks"] / c["median_s"]
                res["ceiling_any_schedule"] = med["ray-tasks"] / c["least_s"]
                print(f"{name:9} compute only        median {c['median_s']:.2f}s, {c['cpu_s']:.2f} CPU-s, "
                      f"critical path {c['critical_path_s']:.2f}s: ceiling ray-tasks / compute "
                      f"{res['ceiling']:.2f}x (any schedule: {res['ceiling_any_schedule']:.2f}x)", flush=True)
                for mode in ("local", "zerrow-ray", "zerrow-ray-nocache"):
                    res[f"ray-tasks/{mode}"] = med["ray-tasks"] / med[mode]
                res["zerrow-ray/local"] = med["zerrow-ray"] / med["local"]
                out[name] = res
    finally:
        ray.shutdown()
    return out


def two_nodes(data: str) -> dict:
    from ray.cluster_utils import Cluster

    store = 2 * 2**30
    c = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=1, resources={"m_a": 1}, object_store_memory=store, include_dashboard=False))
    c.add_node(num_cpus=1, resources={"m_b": 1}, object_store_memory=store)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    try:
        with zp.Runtime(ray=c.address, pins=PINS) as rt:
            rep = rt.run(taxi_zones.build(data_dir=data)).report
    finally:
        ray.shutdown()
        c.shutdown()
    where = {n.name: n.machine for n in rep.nodes}
    crossing = [e for e in rep.edges if where[e.src] != where[e.dst]]
    local = [e for e in rep.edges if where[e.src] == where[e.dst]]
    return {
        "machines": sorted(set(where.values())),
        "crossing_edges": {f"{e.src}->{e.dst}": e.bytes for e in crossing},
        "crossing_bytes": sum(e.bytes for e in crossing),
        "transferred_bytes": rep.transferred_bytes,
        "exact": rep.transferred_bytes == sum(e.bytes for e in crossing)
                 and all(e.transferred == e.bytes for e in crossing),
        "local_edges_copied": sum(e.bytes_copied for e in local),
        "local_edge_bytes": sum(e.bytes for e in local),
        "wall_s": rep.wall_s,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=8_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", default=os.path.join(".benchmarks", "ray_results.json"))
    args = ap.parse_args()
    data = demo_data.generate(args.rows)
    results = {"rows": args.rows, "rounds": args.rounds, "workers": args.workers,
               "ray": ray.__version__, "cpu": platform.processor() or platform.machine(),
               "ncpu": os.cpu_count(), "RAY_worker_niceness": os.environ["RAY_worker_niceness"]}
    results["single_node"] = single_node(data, args.workers, args.rounds)
    results["two_nodes"] = two_nodes(data)
    print(json.dumps(results["two_nodes"], indent=1))
    for name in PIPELINES:
        r = results["single_node"][name]
        print(f"{name}: ray-tasks / zerrow-ray {r['ray-tasks/zerrow-ray']:.2f}x, "
              f"ray-tasks / zerrow-ray-nocache {r['ray-tasks/zerrow-ray-nocache']:.2f}x, "
              f"zerrow-ray / local {r['zerrow-ray/local']:.2f}x, "
              f"ceiling ray-tasks / compute {r['ceiling']:.2f}x, "
              f"equal {all(r[m]['equal'] for m in ('local', 'zerrow-ray', 'zerrow-ray-nocache', 'ray-tasks'))}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
