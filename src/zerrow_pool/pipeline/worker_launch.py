"""How a worker process starts: its environment, its command, and whether it is forked warm.

A worker is a fresh interpreter (``python -c BOOT``) with the package on
PYTHONPATH and, for the zerrow transport, the preload library in LD_PRELOAD
(so that every Arrow path allocates shareable memory). Its imports take
~0.4 s and ~0.5 CPU-s. When this process has a fork server (forkserver.py)
whose environment is exactly the worker's, the worker is forked from it
instead, its imports already done.

Importing this module imports neither pyarrow nor the compiled core: the
service computes a worker's environment before its own imports.
"""
from __future__ import annotations

import os
import subprocess
import sys

from . import forkserver, sandbox

# pyarrow first: it loads the libarrow that zerrow's extension links to.
BOOT = "import pyarrow; from zerrow_pool.pipeline.worker import main; main()"
PRELOADED_TRANSPORTS = frozenset({"zerrow"})  # the transports whose workers load the preload library


def _package_root() -> str:
    here = os.path.dirname(os.path.abspath(__file__))  # .../zerrow_pool/pipeline
    return os.path.dirname(os.path.dirname(here))


def worker_env(transport: str, preload: bool, base: dict | None = None) -> dict:
    """The environment of a worker for ``transport``: ``base`` (default os.environ)
    with the preload library (when ``preload`` and the transport uses it) and the package."""
    from .._preload import ld_preload_with
    from .zerrow_api import preload_library

    env = dict(os.environ if base is None else base)
    lib = preload_library() if preload and transport in PRELOADED_TRANSPORTS else None
    if lib:
        env["LD_PRELOAD"] = ld_preload_with(lib, env.get("LD_PRELOAD"))
    env["PYTHONPATH"] = os.pathsep.join(
        [_package_root()] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def start(fd: int, transport: str, preload: bool, isolation: str):
    """Start a worker that talks over socket ``fd`` (the caller closes its copy).

    Returns a ``subprocess.Popen`` or a ``forkserver.ForkedProcess``, which
    answer ``pid``, ``poll``, ``wait`` and ``kill`` alike."""
    env = worker_env(transport, preload)
    server = forkserver.current()
    if server is not None and server.env == env:
        proc = server.fork(fd, os.getcwd(), [transport, str(isolation)])
        if proc is not None:
            return proc
    pdeathsig = "1" if sandbox.children_may_die_with_this_thread() else "0"
    cmd = [sys.executable, "-c", BOOT, str(fd), transport, str(isolation), str(os.getpid()),
           pdeathsig]
    return subprocess.Popen(cmd, pass_fds=[fd], env=env, stdin=subprocess.DEVNULL)
