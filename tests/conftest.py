"""Shared test helpers: memory figures from /proc, subprocess runs, pool fixtures."""

import os
import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest

# Every pipeline run in the tests (in-process, the CLI, the service) checks its
# runs' invariants at each turn of the coordinator's loop (run_state.check).
os.environ.setdefault("ZERROW_DEBUG_INVARIANTS", "1")


def proc_status(field, pid="self"):
    """A ``kB`` field of /proc/<pid>/status (VmRSS, RssShmem, ...) in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def rss_shmem(pid="self"):
    """Resident shared-memory bytes mapped by a process (memfd pages count here)."""
    return proc_status("RssShmem", pid)


def meminfo(field="Shmem"):
    """A field of /proc/meminfo in bytes (machine-wide; other processes move it too)."""
    from zerrow_pool.pipeline.machine_memory import meminfo as fields

    return fields()[field] * 1024


def memfd_mapping_of(address):
    """(inode, start) of the memfd mapping in this process that holds ``address``, or None.

    Identifies the segment a buffer lies in using only what the kernel shows
    in /proc/self/maps.
    """
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= address < hi:
                name = " ".join(parts[5:]) if len(parts) > 5 else ""
                return (int(parts[4]), lo) if "memfd:" in name else None
    return None


def run_python(code, preload=False, env=None, timeout=120):
    """Runs ``code`` in a fresh interpreter (optionally under the preload library);
    returns its stdout, raising with stderr attached on failure."""
    import zerrow_pool

    env = dict(os.environ if env is None else env)
    if preload:
        env = zerrow_pool.preload_env(env)
    else:
        env.pop("LD_PRELOAD", None)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


@pytest.fixture
def zerrow_default():
    """The zerrow pool as pyarrow's default for the test; the previous one restored after."""
    import zerrow_pool

    previous = pa.default_memory_pool()
    pa.set_memory_pool(zerrow_pool.pool())
    try:
        yield zerrow_pool.pool()
    finally:
        pa.set_memory_pool(previous)


@pytest.fixture(scope="session", autouse=True)
def private_zerrow_service():
    """`zerrow run` in tests talks to a service of the test session's own, stopped at the end.

    A short path under /tmp: a Unix socket's path is limited to 107 bytes."""
    import shutil
    import tempfile

    directory = tempfile.mkdtemp(prefix="zsvc-")
    os.chmod(directory, 0o700)
    saved = os.environ.get("ZERROW_SERVICE_DIR")
    os.environ["ZERROW_SERVICE_DIR"] = directory
    try:
        yield directory
    finally:
        from zerrow_pool.service import ServiceClient

        ServiceClient(directory).stop()
        if saved is None:
            os.environ.pop("ZERROW_SERVICE_DIR", None)
        else:
            os.environ["ZERROW_SERVICE_DIR"] = saved
        shutil.rmtree(directory, ignore_errors=True)


# Lower layers first: a failure there explains failures in the layers built on them.
LAYERS = ("test_install", "test_pool_", "test_share_", "test_pipeline_")


def pytest_collection_modifyitems(config, items):
    """Quick tests first, layer by layer, then ``slow`` ones, then ``vm`` ones, so that a first
    failure shows within minutes instead of after compiles and kernel boots; file order is kept
    otherwise."""
    def layer(item):
        name = item.path.name
        return next((i for i, prefix in enumerate(LAYERS) if name.startswith(prefix)), len(LAYERS))

    def group(item):
        return 2 if item.get_closest_marker("vm") else 1 if item.get_closest_marker("slow") else 0

    items.sort(key=lambda item: (group(item), layer(item)))
