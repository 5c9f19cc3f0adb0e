"""First-touch cost of 400 MiB: anonymous vs memfd pages, with and without huge
pages, MADV_POPULATE_WRITE or fallocate beforehand (what a cold pool pays).

    python bench/first_touch.py
"""
import ctypes, mmap, os, time, numpy as np
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
N = 400 << 20
MADV_POPULATE_WRITE, MADV_HUGEPAGE = 23, 14
def region(kind):
    if kind == "anon":
        p = libc.mmap(None, N, 3, 0x22, -1, 0); return p, None
    fd = os.memfd_create("x"); os.ftruncate(fd, N)
    p = libc.mmap(None, N, 3, 0x01, fd, 0); return p, fd
def run(kind, how):
    p, fd = region(kind)
    if kind == "anon" and how == "thp": libc.madvise(p, N, MADV_HUGEPAGE)
    t0 = time.perf_counter()
    if how == "populate":
        assert libc.madvise(p, N, MADV_POPULATE_WRITE) == 0, ctypes.get_errno()
    if how == "fallocate":
        assert libc.fallocate(fd, 0, 0, N) == 0
    a = np.ctypeslib.as_array((ctypes.c_uint8 * N).from_address(p))
    a[:] = 1
    dt = time.perf_counter() - t0
    libc.munmap(ctypes.c_void_p(p), ctypes.c_size_t(N))
    if fd: os.close(fd)
    return dt


if __name__ == "__main__":
    for kind, how in [("anon", "touch"), ("anon", "thp"), ("anon", "populate"),
                      ("memfd", "touch"), ("memfd", "populate"), ("memfd", "fallocate")]:
        ts = sorted(run(kind, how) for _ in range(5))
        print(f"{kind:6} {how:10} median {ts[2] * 1000:7.1f} ms  min {ts[0] * 1000:7.1f} ms  (400 MiB, write every byte)")
