"""``zerrow doctor``: what this machine gives zerrow, and which setting would make it faster.

It reads the kernel's settings (memfd, write leases, shmem huge pages, hugetlb
pages, the memory cgroup), looks for the kernel module and the preload library,
and measures in about a second what fresh memory costs here: a memfd faulted
in page by page, the same populated in one call (what the pool does for large
allocations), and memory written again once resident (what the pool's reuse
gives). The measuring helpers are shared with ``bench/first_touch.py``.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import sys
import time

THP = "/sys/kernel/mm/transparent_hugepage"
MADV_HUGEPAGE, MADV_POPULATE_WRITE = 14, 23
MFD_HUGETLB = 0x0004
F_SETLEASE, F_WRLCK, F_UNLCK = 1024, 1, 2
HUGE_2M = 2 << 20

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
_libc.memfd_create.argtypes = [ctypes.c_char_p, ctypes.c_uint]
PROT_RW, MAP_SHARED, MAP_PRIVATE_ANON = 3, 0x01, 0x22
MAP_FAILED = ctypes.c_void_p(-1).value


# ---------------------------------------------------------------- settings

def read_setting(path: str) -> str | None:
    """The selected value of a sysfs choice file ("always [never]" -> "never"), or its text."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    m = re.search(r"\[([^\]]+)\]", text)
    return m.group(1) if m else text


def shmem_thp() -> dict:
    """Shmem transparent huge page settings: the global one and, on kernels with
    per-size (mTHP) controls, each size's own; plus the sizes a memfd advised
    MADV_HUGEPAGE (as the pool's segments are) may get."""
    top = read_setting(f"{THP}/shmem_enabled")
    sizes = {}
    try:
        names = sorted(os.listdir(THP), key=lambda n: int(re.sub(r"\D", "", n) or 0))
    except OSError:
        names = []
    for name in names:
        if name.startswith("hugepages-"):
            value = read_setting(f"{THP}/{name}/shmem_enabled")
            if value is not None:
                sizes[name[len("hugepages-"):]] = value
    usable = []
    for size, value in sizes.items():
        effective = top if value == "inherit" else value
        if effective in ("always", "within_size", "advise", "force"):
            usable.append(size)
    if not sizes and top in ("always", "within_size", "advise", "force"):
        usable.append("2048kB")
    return {"shmem_enabled": top, "per_size": sizes, "memfd_huge_sizes": usable}


def meminfo() -> dict:
    out = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                out[key] = int(rest.split()[0])
    except OSError:
        pass
    return out


def hugetlb() -> dict:
    info = meminfo()
    return {"free_pages": info.get("HugePages_Free", 0), "total_pages": info.get("HugePages_Total", 0),
            "page_kb": info.get("Hugepagesize", 0),
            "overcommit_pages": int(read_setting("/proc/sys/vm/nr_overcommit_hugepages") or 0)}


def memfd_ok() -> bool:
    try:
        os.close(os.memfd_create("zerrow-doctor", os.MFD_CLOEXEC))
        return True
    except OSError:
        return False


def populate_write() -> bool:
    """Whether the kernel has MADV_POPULATE_WRITE (Linux >= 5.14), with which the
    pool maps a large fresh allocation in one call instead of a fault per page."""
    try:
        fd, p = _map_memfd(1 << 16)
    except OSError:
        return False
    try:
        return _libc.madvise(p, 1 << 16, MADV_POPULATE_WRITE) == 0
    finally:
        _libc.munmap(p, 1 << 16)
        os.close(fd)


def write_leases() -> dict:
    """Whether the kernel grants a write lease on a memfd only to its sole opener:
    what lets the pool reuse a shared segment once its readers are gone."""
    enabled = read_setting("/proc/sys/fs/leases-enable") != "0"
    works = False
    if enabled:
        import fcntl

        fd = os.memfd_create("zerrow-doctor", os.MFD_CLOEXEC)
        try:
            rw = os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
            os.close(fd)
            fd = rw
            try:
                fcntl.fcntl(fd, F_SETLEASE, F_WRLCK)
                fcntl.fcntl(fd, F_SETLEASE, F_UNLCK)
                works = True
            except OSError:
                pass
        finally:
            os.close(fd)
    return {"enabled": enabled, "granted": works}


def memory_cgroup() -> dict:
    """The memory cgroup this process is charged to (memfd pages count there too)."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = [line.strip().split(":", 2) for line in f if line.strip()]
    except OSError:
        return {"version": None}
    for _, controllers, path in lines:
        if "memory" in controllers.split(","):
            limit = read_setting(f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
            return {"version": 1, "path": path, "limit": _limit(limit)}
    for hid, controllers, path in lines:
        if hid == "0" and controllers == "":
            limit = read_setting(f"/sys/fs/cgroup{path}/memory.max")
            return {"version": 2, "path": path, "limit": _limit(limit)}
    return {"version": None}


def _limit(text):
    if text is None or text == "max":
        return None
    n = int(text)
    return None if n >= 1 << 62 else n


def preload() -> dict:
    from ._preload import preload_path

    try:
        path = preload_path()
    except FileNotFoundError:
        path = None
    active = bool(path) and path in os.environ.get("LD_PRELOAD", "").split(":")
    return {"path": path, "active_here": active}


def kernel_module() -> bool:
    try:
        from . import kernel_module_available

        return kernel_module_available()
    except ImportError:
        return os.path.exists("/dev/zerrow")


# ---------------------------------------------------------------- measuring

def _map_memfd(n, flags=0):
    fd = _libc.memfd_create(b"zerrow-doctor", 1 | flags)  # MFD_CLOEXEC
    if fd < 0:
        raise OSError(ctypes.get_errno(), "memfd_create")
    os.ftruncate(fd, n)
    p = _libc.mmap(None, n, PROT_RW, MAP_SHARED, fd, 0)
    if p == MAP_FAILED:
        os.close(fd)
        raise OSError(ctypes.get_errno(), "mmap")
    return fd, p


def _map_anon(n):
    """An anonymous mapping aligned to 2 MiB, so huge pages can back all of it."""
    raw = _libc.mmap(None, n + HUGE_2M, PROT_RW, MAP_PRIVATE_ANON, -1, 0)
    if raw == MAP_FAILED:
        raise OSError(ctypes.get_errno(), "mmap")
    p = (raw + HUGE_2M - 1) & ~(HUGE_2M - 1)
    return raw, p


def write_fresh(kind: str, n: int) -> tuple[float, float]:
    """(wall, CPU) seconds to write every byte of n fresh bytes got in the way `kind` names:

    memfd (faulted in page by page), memfd_populate (MADV_POPULATE_WRITE first),
    memfd_fallocate (fallocate first), memfd_hugetlb (MFD_HUGETLB: needs free
    hugetlb pages), anon (4 KiB pages), anon_thp (MADV_HUGEPAGE), warm (the
    same memfd bytes written a second time: memory already resident)."""
    fd = raw = None
    if kind.startswith("anon"):
        raw, p = _map_anon(n)
    else:
        fd, p = _map_memfd(n, MFD_HUGETLB if kind == "memfd_hugetlb" else 0)
    try:
        if kind == "anon_thp":
            _libc.madvise(p, n, MADV_HUGEPAGE)
        if kind == "warm":
            _libc.memset(p, 0, n)
        w0, c0 = time.perf_counter(), time.thread_time()
        if kind == "memfd_populate" and _libc.madvise(p, n, MADV_POPULATE_WRITE) != 0:
            raise OSError(ctypes.get_errno(), "MADV_POPULATE_WRITE")
        if kind == "memfd_fallocate":
            os.posix_fallocate(fd, 0, n)
        _libc.memset(p, 1, n)
        return time.perf_counter() - w0, time.thread_time() - c0
    finally:
        if raw is not None:
            _libc.munmap(raw, n + HUGE_2M)
        else:
            _libc.munmap(p, n)
            os.close(fd)


def seconds_per_gib(kind: str, n: int, repeat: int) -> float:
    """The least CPU time of `repeat` runs of write_fresh(kind, n), scaled to one
    GiB (CPU time, and the least of it, are the least disturbed by other processes)."""
    return min(write_fresh(kind, n)[1] for _ in range(repeat)) * (1 << 30) / n


def measure(n=128 << 20, repeat=3) -> dict:
    kinds = ["memfd", "memfd_populate", "warm"]
    if read_setting(f"{THP}/enabled") in ("always", "madvise"):
        kinds.append("anon_thp")
    out = {}
    for kind in kinds:
        try:
            out[kind] = seconds_per_gib(kind, n, repeat)
        except OSError:
            out[kind] = None
    return out


# ---------------------------------------------------------------- report

def diagnose(measured: bool = True) -> dict:
    return {"kernel": os.uname().release, "memfd": memfd_ok(), "populate_write": populate_write(),
            "write_leases": write_leases(),
            "shmem_thp": shmem_thp(), "hugetlb": hugetlb(), "kernel_module": kernel_module(),
            "memory_cgroup": memory_cgroup(), "preload": preload(),
            "cost_s_per_gib": measure() if measured else {}}


def advice(d: dict) -> list[str]:
    """The settings that would make zerrow faster here, each with what it is worth."""
    tips = []
    cost = d["cost_s_per_gib"]
    if not d["memfd"]:
        tips.append("memfd_create fails here: zerrow's pool cannot work (Linux >= 3.17 without a seccomp ban needed)")
    if d["memfd"] and not d["populate_write"]:
        tips.append("this kernel lacks MADV_POPULATE_WRITE (Linux >= 5.14): large fresh allocations fault in "
                    "page by page instead of being populated in one call")
    if not d["shmem_thp"]["memfd_huge_sizes"]:
        effect = ""
        if cost.get("memfd") and cost.get("anon_thp"):
            effect = (f" (fresh memfd pages cost {cost['memfd']:.2f} s/GiB here; 2 MiB anonymous pages, "
                      f"the closest measure without changing the setting, {cost['anon_thp']:.2f} s/GiB)")
        tips.append("as root: echo advise > /sys/kernel/mm/transparent_hugepage/shmem_enabled -- the pool's "
                    "segments (advised MADV_HUGEPAGE) then get 2 MiB pages: one fault per 2 MiB instead of "
                    f"one per 4 KiB{effect}")
    if not d["write_leases"]["granted"]:
        tips.append("write leases are off (/proc/sys/fs/leases-enable): shared segments are unmapped instead of "
                    "reused once their readers are done; enable them: echo 1 > /proc/sys/fs/leases-enable")
    if d["preload"]["path"] and not d["preload"]["active_here"]:
        tips.append("Acero, Parquet and dataset readers allocate from zerrow's pool only under the preload "
                    "library: run with `python -m zerrow_pool run SCRIPT` or "
                    "LD_PRELOAD=$(python -m zerrow_pool preload-path)")
    if not d["kernel_module"]:
        tips.append("the zerrow kernel module is not loaded: share() copies buffers zerrow did not allocate "
                    "(numpy, Polars, DuckDB) once instead of mapping them (see kmod/)")
    if cost.get("memfd") and cost.get("warm"):
        tips.append(f"reusing resident memory costs {cost['warm']:.2f} s/GiB against {cost['memfd']:.2f} for "
                    "fresh pages: keep long-lived workers (the pipeline runtime does) rather than a process per task")
    return tips


def _fmt(d: dict) -> str:
    thp, ht, cg, pre = d["shmem_thp"], d["hugetlb"], d["memory_cgroup"], d["preload"]
    per_size = ", ".join(f"{k}={v}" for k, v in thp["per_size"].items()) or "none"
    lines = [
        f"kernel                  {d['kernel']}",
        f"memfd                   {'yes' if d['memfd'] else 'NO'}",
        f"bulk population         {'yes (MADV_POPULATE_WRITE)' if d['populate_write'] else 'no'}",
        f"write leases (reclaim)  {'granted' if d['write_leases']['granted'] else 'not granted'}"
        f"{'' if d['write_leases']['enabled'] else ' (leases-enable=0)'}",
        f"shmem_enabled           {thp['shmem_enabled']}",
        f"shmem per-size THP      {per_size}",
        f"memfd huge pages        {', '.join(thp['memfd_huge_sizes']) or 'none (4 KiB pages only)'}",
        f"hugetlb pages           {ht['free_pages']} free of {ht['total_pages']} ({ht['page_kb']} kB), "
        f"overcommit {ht['overcommit_pages']} (not used by the pool)",
        f"kernel module           {'loaded' if d['kernel_module'] else 'not loaded'}",
        f"memory cgroup           "
        + (f"v{cg['version']} {cg['path']}, limit "
           + (f"{cg['limit'] / (1 << 30):.1f} GiB" if cg.get("limit") else "none") if cg["version"] else "none"),
        f"preload library         {pre['path'] or 'MISSING'}{' (active in this process)' if pre['active_here'] else ''}",
    ]
    if d["cost_s_per_gib"]:
        names = {"memfd": "fresh memfd, faulted page by page", "memfd_populate": "fresh memfd, populated in bulk",
                 "warm": "resident memory, written again", "anon_thp": "fresh anonymous, 2 MiB pages"}
        lines.append("CPU time to write 1 GiB (measured now, best of 3 x 128 MiB):")
        for kind, s in d["cost_s_per_gib"].items():
            lines.append(f"  {names[kind]:<36}{'unavailable' if s is None else f'{s:6.2f} s'}")
    tips = advice(d)
    lines.append("what would make zerrow faster here:" if tips else "nothing to change.")
    lines += [f"  - {t}" for t in tips]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.add_argument("--no-measure", action="store_true", help="skip the ~1 s measurement of fresh memory")
    p.set_defaults(fn=run)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="zerrow doctor", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


def run(args) -> int:
    d = diagnose(measured=not args.no_measure)
    if args.json:
        d["advice"] = advice(d)
        print(json.dumps(d, indent=1))
    else:
        print(_fmt(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
