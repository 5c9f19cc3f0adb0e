"""First-touch cost of 400 MiB: anonymous vs memfd pages, with and without huge
pages, MADV_POPULATE_WRITE or fallocate beforehand (what a cold pool pays).

    python bench/first_touch.py
"""

import ctypes
import os
import time

import numpy as np

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]

N = 400 << 20
PROT_RW, MAP_SHARED, MAP_PRIVATE_ANON = 3, 0x01, 0x22
MADV_HUGEPAGE, MADV_POPULATE_WRITE = 14, 23


def run(kind, how):
    """Seconds to write every byte of a fresh N-byte mapping."""
    fd = None
    if kind == "anon":
        p = libc.mmap(None, N, PROT_RW, MAP_PRIVATE_ANON, -1, 0)
    else:
        fd = os.memfd_create("first_touch")
        os.ftruncate(fd, N)
        p = libc.mmap(None, N, PROT_RW, MAP_SHARED, fd, 0)
    if how == "thp":
        libc.madvise(p, N, MADV_HUGEPAGE)
    t0 = time.perf_counter()
    if how == "populate":
        assert libc.madvise(p, N, MADV_POPULATE_WRITE) == 0, ctypes.get_errno()
    if how == "fallocate":
        assert libc.fallocate(fd, 0, 0, N) == 0, ctypes.get_errno()
    np.ctypeslib.as_array((ctypes.c_uint8 * N).from_address(p))[:] = 1
    seconds = time.perf_counter() - t0
    libc.munmap(p, N)
    if fd is not None:
        os.close(fd)
    return seconds


if __name__ == "__main__":
    for kind, how in [("anon", "touch"), ("anon", "thp"), ("anon", "populate"),
                      ("memfd", "touch"), ("memfd", "populate"), ("memfd", "fallocate")]:
        ts = sorted(run(kind, how) for _ in range(5))
        print(f"{kind:6} {how:10} median {ts[2] * 1000:7.1f} ms  min {ts[0] * 1000:7.1f} ms  (400 MiB, write every byte)")
