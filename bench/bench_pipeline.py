"""Pipeline runtime benchmarks: zerrow transport vs the copy transport.

Run (takes several minutes on 2 cores; needs ~12 GB of free RAM):

    pytest bench/bench_pipeline.py --benchmark-only -s
    python bench/plot_pipeline.py        # -> bench/pipeline.png + a markdown table

Scenarios, all over the synthetic taxi dataset (28M trips, ~2.2 GB decoded):

1. ``movement``: data-movement-bound DAG (projection, filter, add column,
   rename, sort by an indexed key, pass-through);
2. ``mixed``: filters, a join with a dimension table, group-by aggregates;
3. ``fanout``: four DAGs at once over the same Parquet input, decode cache on
   vs off (the cache is cleared before every round: it is decoded once and
   shared by the four DAGs, not carried over from an earlier round);
4. ``budget``: the mixed DAG under a budget of 1.5x its largest intermediate.

Modes: ``copy`` (Arrow IPC files in /dev/shm, memory-mapped: the baseline),
``zerrow`` (decode cache warm from a previous round, as for a pipeline run
repeatedly by a long-lived runtime), ``zerrow-cold`` (cache cleared before
every round), ``zerrow-nocache``.  Ratios are computed against ``copy``
measured in the same session.  Memory is compared by what the machine pays
(``machine``: the peak of every process's private and shared memory during a
round, above its value before the runtime started; see
zerrow_pool/pipeline/machine_memory.py), since a report's ``peak_held`` does
not see the copy workers' private heaps.  Raw numbers go to
``$ZERROW_BENCH_OUT`` (default ``.benchmarks/pipeline_results.json``).
"""
from __future__ import annotations

import json
import os
import time

import pytest

from zerrow_pool import demo_data
from zerrow_pool import pipeline as zp
from zerrow_pool.pipeline.demos import taxi_movement, taxi_scan, taxi_zones
from zerrow_pool.pipeline.machine_memory import PeakSampler, machine_memory

ROWS = int(os.environ.get("ZERROW_BENCH_ROWS", demo_data.DEFAULT_ROWS))
ROUNDS = int(os.environ.get("ZERROW_BENCH_ROUNDS", "3"))
WORKERS = int(os.environ.get("ZERROW_BENCH_WORKERS", "2"))
ISOLATION = os.environ.get("ZERROW_BENCH_ISOLATION", "process")  # or "none": sandbox off
OUT = os.environ.get("ZERROW_BENCH_OUT", os.path.join(".benchmarks", "pipeline_results.json"))

RESULTS: dict = {"rows": ROWS, "workers": WORKERS, "rounds": ROUNDS, "isolation": ISOLATION,
                 "scenarios": {}}

needs_zerrow = pytest.mark.skipif(not zp.zerrow_available(),
                                  reason="zerrow sharing API not built")


@pytest.fixture(scope="session")
def dataset():
    return demo_data.generate(ROWS)


def _summary(reports, seconds, cpu, machine):
    last = reports[-1]
    return {
        "machine": max(machine),
        "seconds": seconds, "mean_s": sum(seconds) / len(seconds), "min_s": min(seconds),
        "cpu_s": cpu, "mean_cpu_s": sum(cpu) / len(cpu),
        "edge_bytes": last.edge_bytes, "edge_zero_copy": last.edge_zero_copy,
        "zero_copy_rate": last.zero_copy_rate, "bytes_copied": last.bytes_copied,
        "peak_held": last.peak_held, "peak_with_workers": last.peak_with_workers,
        "budget": last.budget, "spills": last.spills,
        "spilled_bytes": last.spilled_bytes, "cache_hits": last.cache_hits,
        "cache_misses": last.cache_misses, "decoded_bytes": last.decoded_bytes,
        "status": [r.status for r in reports],
        "nodes": {n.name: {"s": n.seconds, "bytes": n.bytes, "bytes_copied": n.bytes_copied}
                  for n in last.nodes},
    }


def _mode_kwargs(mode):
    transport = "copy" if mode == "copy" else "zerrow"
    return {"transport": transport, "cache": mode != "zerrow-nocache", "workers": WORKERS,
            "isolation": ISOLATION}


def _measure(benchmark, scenario, mode, run_once, rt, before):
    """Time ``run_once`` (returns a list of reports) over ROUNDS rounds; ``before``:
    machine_memory() before the runtime started."""
    run_once()  # warm-up: worker imports, page cache, and the decode cache for "zerrow"
    reports, seconds, cpu, machine = [], [], [], []

    def setup():
        if mode == "zerrow-cold" and rt.cache:
            rt.cache.clear()

    def once():
        t = time.perf_counter()
        with PeakSampler() as sampler:
            reps = run_once()
        seconds.append(time.perf_counter() - t)
        machine.append(sampler.peak - before)
        cpu.append(sum(r.cpu_s for r in reps))
        reports.extend(reps)

    benchmark.pedantic(once, setup=setup, rounds=ROUNDS, iterations=1)
    RESULTS["scenarios"].setdefault(scenario, {})[mode] = _summary(reports, seconds, cpu, machine)
    return reports


MODES = ["copy", pytest.param("zerrow", marks=needs_zerrow),
         pytest.param("zerrow-cold", marks=needs_zerrow),
         pytest.param("zerrow-nocache", marks=needs_zerrow)]


@pytest.mark.parametrize("mode", MODES)
def test_movement(benchmark, dataset, mode):
    benchmark.group = "1-movement"
    p = taxi_movement.build(data_dir=dataset)
    before = machine_memory()
    with zp.Runtime(**_mode_kwargs(mode)) as rt:
        reps = _measure(benchmark, "movement", mode,
                        lambda: [rt.run(p, outputs=()).report], rt, before)
    if mode.startswith("zerrow"):
        assert reps[-1].zero_copy_rate >= 0.99, reps[-1].format()


@pytest.mark.parametrize("mode", MODES)
def test_mixed(benchmark, dataset, mode):
    benchmark.group = "2-mixed"
    p = taxi_zones.build(data_dir=dataset)
    before = machine_memory()
    with zp.Runtime(**_mode_kwargs(mode)) as rt:
        reps = _measure(benchmark, "mixed", mode, lambda: [rt.run(p, outputs=()).report], rt, before)
    RESULTS["scenarios"]["mixed"][mode]["largest_intermediate"] = max(
        n.bytes for n in reps[-1].nodes)


@pytest.mark.parametrize("mode", ["copy", pytest.param("zerrow-cold", marks=needs_zerrow),
                                  pytest.param("zerrow", marks=needs_zerrow),
                                  pytest.param("zerrow-nocache", marks=needs_zerrow)])
def test_fanout(benchmark, dataset, mode):
    benchmark.group = "3-fanout-4-dags"
    pipes = [taxi_scan.build(name=f"scan{i}", data_dir=dataset) for i in range(4)]
    before = machine_memory()
    with zp.Runtime(**_mode_kwargs(mode)) as rt:
        _measure(benchmark, "fanout", mode,
                 lambda: [r.report for r in rt.run_many(pipes, outputs=())], rt, before)


@pytest.mark.parametrize("mode", ["copy", pytest.param("zerrow", marks=needs_zerrow)])
def test_budget(benchmark, dataset, mode):
    benchmark.group = "4-mixed-tight-budget"
    p = taxi_zones.build(data_dir=dataset)
    with zp.Runtime(**_mode_kwargs(mode)) as rt:
        largest = max(n.bytes for n in rt.run(p, outputs=()).report.nodes)
    budget = int(1.5 * largest)
    before = machine_memory()
    with zp.Runtime(memory_budget=budget, **_mode_kwargs(mode)) as rt:
        reps = _measure(benchmark, "budget", mode, lambda: [rt.run(p, outputs=()).report], rt, before)
    RESULTS["scenarios"]["budget"][mode]["largest_intermediate"] = largest
    for r in reps:
        assert r.status == "done"
        assert r.peak_held <= budget * 1.10, r.format()


@pytest.fixture(scope="session", autouse=True)
def write_results():
    """After the session: ratios vs copy (same session) and the raw numbers, for
    plot_pipeline.py (a fixture, so that --benchmark-only does not skip it)."""
    yield
    if RESULTS["scenarios"]:
        _write_results()


def _write_results():
    ratios = {}
    for scen, modes in RESULTS["scenarios"].items():
        base = modes.get("copy")
        if not base:
            continue
        for mode, m in modes.items():
            if mode == "copy":
                continue
            ratios[f"{scen}/{mode}"] = {
                "speedup": base["mean_s"] / m["mean_s"],
                "copied_reduction": 1 - m["bytes_copied"] / max(1, base["bytes_copied"]),
                "zero_copy_rate": m["zero_copy_rate"],
                "machine_memory": m["machine"] / max(1, base["machine"]),
            }
    RESULTS["ratios"] = ratios
    os.makedirs(os.path.dirname(OUT) or ".", exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(RESULTS, f, indent=1)
    for k, v in ratios.items():
        print(f"{k:<32} {v['speedup']:5.2f}x faster, {v['copied_reduction']:.1%} fewer bytes "
              f"copied, {v['zero_copy_rate']:.2%} of edge bytes zero-copy, "
              f"{v['machine_memory']:.2f}x the machine's memory at peak")
