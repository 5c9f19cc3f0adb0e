"""What a run costs the machine in memory, the way `free` would show it.

A run's report counts the shared memory behind its intermediates and cached
decodes (``peak_held``). That is not what the copy transport costs: its workers
also hold private heaps (each decoded input, each node's result before it is
written out) that no shared-memory figure sees. To compare transports fairly,
this module samples the machine's own count of every process's memory,
/proc/meminfo's ``AnonPages + Shmem``: private anonymous pages plus shared
memory (memfds, /dev/shm), each page once however many processes map it. Page
cache (the Parquet files read) is not in it.

The figure is machine-wide, so other programs' allocations show in it too:
meaningful on a quiet machine, which is how the demo and bench/bench_cli.py use it.
"""
from __future__ import annotations

import threading

SAMPLE_INTERVAL_S = 0.01


def meminfo() -> dict:
    """/proc/meminfo as ``{field: number}``, as the kernel writes it: kB for
    sizes, plain counts for the ``HugePages_*`` fields."""
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            out[key] = int(rest.split()[0])
    return out


def machine_memory() -> int:
    """``AnonPages + Shmem`` from /proc/meminfo, in bytes."""
    info = meminfo()
    return (info["AnonPages"] + info["Shmem"]) * 1024


class PeakSampler:
    """The highest :func:`machine_memory` seen while the ``with`` block runs.

    Sampled every ``SAMPLE_INTERVAL_S`` by a daemon thread, and once more at
    each end, so a block shorter than the interval is still measured.
    """

    def __init__(self, read=machine_memory):
        self._read = read
        self.peak = read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="zerrow-memory-sampler", daemon=True)

    def _sample(self):
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            self.peak = max(self.peak, self._read())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._read())
