"""Runs the table-handoff benchmark and prints the tables for bench/RESULTS.md (## Sharing).

    python bench/handoff_run.py [--sizes 1M,64M,1G] [--methods zerrow,ipc_stream,...]
                                [--bare-sizes 1M,8M,64M,256M,1G] [--json out.json]

Part 1 hands a table (int64, float64, int32, float32 and string columns, built
inside zerrow_pool.scope()) from this process to a persistent receiver that
sums one column, by every method of handoff_methods.py; reports the median time
per handoff, the bytes copied, and the peak RSS of both processes.
Part 2 is the bare zerrow handoff (share + send + recv + attach, no data
touched) of a 10-column table against its size, with the time split into its
steps (share, send, recv, attach) measured on each side.
"""

import argparse
import gc
import json
import os
import platform
import select
import socket
import statistics
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

import zerrow_pool as z  # noqa: E402
from handoff_methods import METHODS, Method, make_table, peak_rss, reset_peak_rss  # noqa: E402

UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
REPS = {1 << 20: 40, 64 << 20: 8, 1 << 30: 5}

# Copies of the table's bytes per handoff, by construction of each method.
COPIES = {
    "zerrow": "0 (measured: Share.bytes_copied)",
    "ipc_stream": "2: writer into the socket, socket into the receiver's buffers",
    "ipc_shm_file": "1: writer into the /dev/shm file (the reader maps it)",
    "pickle": "3: pickle bytes, socket into the receiver's bytes, unpickled buffers",
    "shared_mem": "1: writer into the shared block (the reader wraps it)",
    "ray": "1: ray.put into the object store (ray.get maps it)",
}
COPY_FACTOR = {"zerrow": 0, "ipc_stream": 2, "ipc_shm_file": 1, "pickle": 3, "shared_mem": 1, "ray": 1}


def parse_size(s):
    return int(float(s[:-1]) * UNITS[s[-1]]) if s[-1] in UNITS else int(s)


def human(n):
    for unit, f in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= f:
            return f"{n / f:.0f} {unit}"
    return f"{n} B"


def fmt_time(s):
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def machine():
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu": model, "cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "pyarrow": pa.__version__,
            "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30), 1),
            "loadavg": open("/proc/loadavg").read().split()[:3]}


def run_full(sizes, methods):
    results = []
    for size in sizes:
        with z.scope():
            table = make_table(size)
        want = pc.sum(table.column("f64")).as_py()
        base_rss = rss()
        for name in methods:
            try:
                m = Method(name)
            except Exception as e:  # e.g. Ray cannot start
                results.append({"method": name, "size": size, "error": f"{type(e).__name__}: {e}"})
                continue
            try:
                m.handoff(table)  # warm-up (zerrow: freezes the segments; ray: first put)
                gc.collect()
                reset_peak_rss()
                m.reset_receiver_peak()
                times = []
                for _ in range(REPS.get(size, 5)):
                    t0 = time.perf_counter()
                    got = m.handoff(table)
                    times.append(time.perf_counter() - t0)
                    assert abs(got - want) <= 1e-9 * abs(want) + 1e-6, (name, got, want)
                r = {"method": name, "size": size, "nbytes": table.nbytes, "rows": table.num_rows,
                     "median_s": statistics.median(times), "min_s": min(times), "reps": len(times),
                     "producer_peak_growth": max(0, peak_rss() - base_rss),
                     "receiver_peak_rss": m.receiver_peak_rss(),
                     "bytes_copied": (m.last.get("bytes_copied") if name == "zerrow"
                                      else COPY_FACTOR[name] * table.nbytes)}
                results.append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
            finally:
                m.close()
            gc.collect()
        del table
        gc.collect()
        z.release_unused()
    return results


# -- the bare handoff, split into steps

BARE_RECEIVER = r"""
import os, select, socket, struct, sys, time
import zerrow_pool as z
sock = socket.socket(fileno=int(sys.argv[1]))
while True:
    r, _, _ = select.select([sock], [], [])
    t0 = time.perf_counter()
    try:
        s = z.recv_share(sock)
    except EOFError:
        break
    t1 = time.perf_counter()
    obj = z.attach(s.descriptor, s.fds)
    t2 = time.perf_counter()
    rows = obj.num_rows
    s.close()
    del obj
    sock.sendall(struct.pack("<ddd", t1 - t0, t2 - t1, rows))
"""


def run_bare(sizes, reps=300, ncols=10):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    proc = subprocess.Popen([sys.executable, "-c", BARE_RECEIVER, str(theirs.fileno())],
                            pass_fds=[theirs.fileno()], env=env)
    theirs.close()
    out = []
    try:
        for size in sizes:
            with z.scope():
                table = make_table(size, ncols=ncols)
            steps = {"share": [], "send": [], "recv": [], "attach": [], "round_trip": [], "round_trip_api": []}
            for i in range(reps + 20):
                t0 = time.perf_counter()
                s = z.share(table)
                t1 = time.perf_counter()
                z.send(ours, s)
                t2 = time.perf_counter()
                ack = b""
                while len(ack) < 24:
                    ack += ours.recv(24 - len(ack))
                t3 = time.perf_counter()
                s.close()
                recv_s, attach_s, rows = struct.unpack("<ddd", ack)
                assert rows == table.num_rows
                if i >= 20:
                    steps["share"].append(t1 - t0)
                    steps["send"].append(t2 - t1)
                    steps["recv"].append(recv_s)
                    steps["attach"].append(attach_s)
                    steps["round_trip"].append(t3 - t0)
            # the plain API the way a user writes it: z.send(sock, table) / z.recv(sock)
            for i in range(reps // 2 + 10):
                t0 = time.perf_counter()
                z.send(ours, table)
                ack = b""
                while len(ack) < 24:
                    ack += ours.recv(24 - len(ack))
                if i >= 10:
                    steps["round_trip_api"].append(time.perf_counter() - t0)
            with z.share(table) as s:
                nsegments, nbuffers, desc_len = len(s.fds), s.nbuffers, len(s.descriptor)
            r = {"size": size, "nbytes": table.nbytes, "ncols": ncols, "segments": nsegments, "buffers": nbuffers,
                 "descriptor_bytes": desc_len}
            for k, v in steps.items():
                v.sort()
                r[k + "_median_s"] = statistics.median(v)
                r[k + "_p90_s"] = v[int(len(v) * 0.9)]
            out.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
            del table
            gc.collect()
            z.release_unused()
    finally:
        ours.close()
        proc.wait(timeout=30)
    return out


def markdown(full, bare, info, argv):
    lines = []
    lines.append(f"- **Machine:** {info['cpu']}, {info['cpus']} vCPUs shared with other jobs (load average "
                 f"{' '.join(info['loadavg'])} at the start), {info['mem_gib']} GiB, Linux {info['kernel']}, "
                 f"Python {info['python']}, pyarrow {info['pyarrow']}.")
    lines.append(f"- **Command:** `python bench/handoff_run.py {' '.join(argv)}`")
    lines.append("")
    if full:
        sizes = sorted({r["size"] for r in full})
        lines.append("Time per handoff (median), receiver sums one float64 column; ratio = method ÷ zerrow:")
        lines.append("")
        lines.append("| method | " + " | ".join(human(s) for s in sizes) + " |")
        lines.append("| --- |" + " --- |" * len(sizes))
        by = {(r["method"], r["size"]): r for r in full}
        for m in METHODS:
            if not any((m, s) in by for s in sizes):
                continue
            cells = []
            for s in sizes:
                r = by.get((m, s))
                zr = by.get(("zerrow", s))
                if r is None:
                    cells.append("–")
                elif "error" in r:
                    cells.append("failed")
                elif m == "zerrow" or zr is None or "error" in zr:
                    cells.append(fmt_time(r["median_s"]))
                else:
                    cells.append(f"{fmt_time(r['median_s'])} ({r['median_s'] / zr['median_s']:.0f}×)")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
        lines.append("Bytes copied per handoff and peak RSS (producer: growth over its RSS with the table "
                     "built; receiver: whole process), at the largest size:")
        lines.append("")
        lines.append("| method | table | bytes copied | how | producer peak growth | receiver peak RSS |")
        lines.append("| --- | --- | --- | --- | --- | --- |")
        big = sizes[-1]
        for m in METHODS:
            r = by.get((m, big))
            if r is None or "error" in r:
                continue
            lines.append(f"| {m} | {human(r['nbytes'])} | {human(r['bytes_copied']) if r['bytes_copied'] else '0'}"
                         f" | {COPIES[m]} | {human(r['producer_peak_growth'])} | {human(r['receiver_peak_rss'])} |")
        errors = [r for r in full if "error" in r]
        for r in errors:
            lines.append(f"\n{r['method']} at {human(r['size'])} failed: {r['error']}")
        lines.append("")
    if bare:
        lines.append("Bare zerrow handoff of a 10-column table (share + send + recv + attach, nothing read), "
                     "median (p90) per step:")
        lines.append("")
        lines.append("| table | segments | buffers | descriptor | share | send | recv | attach | round trip "
                     "| `send(sock, table)`/`recv` round trip |")
        lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in bare:
            cell = lambda k: f"{fmt_time(r[k + '_median_s'])} ({fmt_time(r[k + '_p90_s'])})"  # noqa: E731
            lines.append(f"| {human(r['nbytes'])} | {r['segments']} | {r['buffers']} | {r['descriptor_bytes']} B | "
                         f"{cell('share')} | {cell('send')} | {cell('recv')} | {cell('attach')} | "
                         f"{cell('round_trip')} | {cell('round_trip_api')} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1M,64M,1G")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--bare-sizes", default="1M,8M,64M,256M,1G")
    ap.add_argument("--bare-reps", type=int, default=300)
    ap.add_argument("--json")
    args = ap.parse_args()
    info = machine()
    full = run_full([parse_size(s) for s in args.sizes.split(",") if s],
                    [m for m in args.methods.split(",") if m]) if args.sizes else []
    bare = run_bare([parse_size(s) for s in args.bare_sizes.split(",") if s], reps=args.bare_reps) \
        if args.bare_sizes else []
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "full": full, "bare": bare}, f, indent=1)
    print(markdown(full, bare, info, sys.argv[1:]))


if __name__ == "__main__":
    main()
