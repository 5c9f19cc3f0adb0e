"""Locating and using libzerrow_preload.so, which routes arrow::default_memory_pool()."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PRELOAD_NAME = "libzerrow_preload.so"


def preload_path() -> str:
    """Path of the LD_PRELOAD library that routes ``arrow::default_memory_pool()``.

    Start a process with ``LD_PRELOAD=<this path>`` (or through
    ``python -m zerrow_pool run SCRIPT``, or with :func:`preload_env`) and, once
    ``zerrow_pool`` is imported, every Arrow C++ path that calls
    ``arrow::default_memory_pool()`` (Acero, Parquet and dataset readers,
    ``to_numpy``...) allocates from the zerrow pool.

    Returns
    -------
    str
        The absolute path of ``libzerrow_preload.so`` in the installed package.

    Raises
    ------
    FileNotFoundError
        The installation lacks the library; reinstall zerrow-pool.
    """
    path = Path(__file__).with_name(PRELOAD_NAME)
    if not path.exists():
        raise FileNotFoundError(f"{PRELOAD_NAME} is missing from {path.parent}: reinstall zerrow-pool")
    return str(path)


def preload_env(env=None) -> dict:
    """A copy of ``env`` (default: os.environ) with the preload library prepended to LD_PRELOAD.

    Parameters
    ----------
    env : mapping, optional
        The environment to start from; ``os.environ`` when None.

    Returns
    -------
    dict
        The environment for a child process that should allocate from the zerrow pool.

    Raises
    ------
    FileNotFoundError
        The installation lacks the preload library (see :func:`preload_path`).
    """
    env = dict(os.environ if env is None else env)
    env["LD_PRELOAD"] = ld_preload_with(preload_path(), env.get("LD_PRELOAD"))
    return env


def ld_preload_with(lib: str, current: str | None) -> str:
    """The LD_PRELOAD value that loads ``lib`` and what ``current`` loaded: ``lib`` first
    unless ``current`` already has it (the one place LD_PRELOAD is composed)."""
    if not current:
        return lib
    return current if lib in current.split(":") else f"{lib}:{current}"


def run_with_preload(argv) -> None:
    """Replace this process with ``python argv...`` running under the preload library."""
    env = preload_env()
    code = "import sys, runpy, zerrow_pool; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    os.execvpe(sys.executable, [sys.executable, "-c", code, *argv], env)
