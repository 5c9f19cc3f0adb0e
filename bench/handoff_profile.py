"""Where a zerrow handoff's time goes, step by step, on both sides.

    python bench/handoff_profile.py [--size 1G] [--reps 6]

Producer: first share (freezes the segments) vs later shares, then handoffs.
Receiver (a persistent process): recv + attach, the sum of one float64
column on the fresh mapping, the same sum again (warm page tables), and the
drop of the table (munmap of its mapping), each timed separately.
"""

import argparse
import os
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import zerrow_pool as z  # noqa: E402
from handoff_methods import make_table  # noqa: E402

RECEIVER = r"""
import gc, select, socket, struct, sys, time
import pyarrow.compute as pc, zerrow_pool as z
sock = socket.socket(fileno=int(sys.argv[1]))
while True:
    select.select([sock], [], [])
    t0 = time.perf_counter()
    try:
        t = z.recv(sock)
    except EOFError:
        break
    t1 = time.perf_counter()
    pc.sum(t.column("f64")).as_py()
    t2 = time.perf_counter()
    pc.sum(t.column("f64")).as_py()
    t3 = time.perf_counter()
    del t  # the last reference: the mapping goes now (reference counting, no gc needed)
    t4 = time.perf_counter()
    sock.sendall(struct.pack("<dddd", t1 - t0, t2 - t1, t3 - t2, t4 - t3))
"""

UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1G")
    ap.add_argument("--reps", type=int, default=6)
    args = ap.parse_args()
    size = int(args.size[:-1]) * UNITS[args.size[-1]]
    with z.scope():
        table = make_table(size)
    t0 = time.perf_counter()
    z.share(table).close()
    t1 = time.perf_counter()
    z.share(table).close()
    t2 = time.perf_counter()
    print(f"table {table.nbytes >> 20} MiB: first share (freeze) {(t1 - t0) * 1e3:.1f} ms, "
          f"next share {(t2 - t1) * 1e6:.0f} us")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    proc = subprocess.Popen([sys.executable, "-c", RECEIVER, str(theirs.fileno())], pass_fds=[theirs.fileno()],
                            env=env)
    theirs.close()
    for _ in range(args.reps):
        t0 = time.perf_counter()
        z.send(ours, table)
        ack = b""
        while len(ack) < 32:
            ack += ours.recv(32 - len(ack))
        rt = time.perf_counter() - t0
        recv, cold, warm, drop = struct.unpack("<dddd", ack)
        print(f"round trip {rt * 1e3:7.1f} ms | recv+attach {recv * 1e3:6.2f} ms | sum on fresh mapping "
              f"{cold * 1e3:6.1f} ms | same sum again {warm * 1e3:6.1f} ms | drop (munmap) {drop * 1e3:6.1f} ms")
    ours.close()
    proc.wait(timeout=60)


if __name__ == "__main__":
    main()
