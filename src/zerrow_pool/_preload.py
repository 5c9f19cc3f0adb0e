"""Locating and using libzerrow_preload.so, which routes arrow::default_memory_pool()."""

import os
import sys
from pathlib import Path

PRELOAD_NAME = "libzerrow_preload.so"


def preload_path() -> str:
    """Path of the LD_PRELOAD library that routes ``arrow::default_memory_pool()``.

    Start a process with ``LD_PRELOAD=<this path>`` (or through
    ``python -m zerrow_pool run SCRIPT``) and, once ``zerrow_pool`` is imported,
    every Arrow C++ path that calls ``arrow::default_memory_pool()`` (Acero,
    Parquet and dataset readers, ``to_numpy``...) allocates from the zerrow pool.
    """
    path = Path(__file__).with_name(PRELOAD_NAME)
    if not path.exists():
        raise FileNotFoundError(f"{PRELOAD_NAME} is missing from {path.parent}: reinstall zerrow-pool")
    return str(path)


def preload_env(env=None) -> dict:
    """A copy of ``env`` (default: os.environ) with the preload library prepended to LD_PRELOAD."""
    env = dict(os.environ if env is None else env)
    current = env.get("LD_PRELOAD", "")
    lib = preload_path()
    if lib not in current.split(":"):
        env["LD_PRELOAD"] = f"{lib}:{current}" if current else lib
    return env


def run_with_preload(argv) -> None:
    """Replace this process with ``python argv...`` running under the preload library."""
    env = preload_env()
    code = "import sys, runpy, zerrow_pool; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    os.execvpe(sys.executable, [sys.executable, "-c", code, *argv], env)
