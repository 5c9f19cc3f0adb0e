"""Workers forked from a warm fork server (pipeline/forkserver.py) instead of fresh interpreters.

Each test starts this process's fork server, runs real pipelines in a runtime
whose workers come from it (or, where the environment differs, start fresh),
and checks where each worker came from through its parent pid.
"""
import contextlib
import os
import signal
import subprocess
import time

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from zerrow_pool import pipeline as zp
from zerrow_pool.pipeline import forkserver, worker_launch
from zerrow_pool.pipeline.testing import make_parquet
from zerrow_pool.pipeline.workers import describe_exit


@zp.node
def where(src):
    """The rows, with the working directory and process the node ran in."""
    n = src.num_rows
    return pa.table({"total": [pc.sum(src["amount"]).as_py()], "rows": [n], "cwd": [os.getcwd()]})


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("PPid:"))


def gone(pid: int, timeout: float = 10.0) -> bool:
    """The process ended (reaped, or a zombie) within ``timeout``.

    (Not test_service's helpers: the workers import this module, without tests/ on their path.)"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def data(tmp_path):
    return make_parquet(str(tmp_path / "facts.parquet"), rows=20_000)


@contextlib.contextmanager
def fork_server(**extra_env):
    """This process's fork server, for the workers of a zerrow runtime started from here now.

    Started inside the test, not in a fixture: a worker forks from it only when its
    environment is exactly the server's, and pytest's PYTEST_CURRENT_TEST differs
    between a fixture's setup and the test's call."""
    fs = forkserver.start({**worker_launch.worker_env("zerrow", True), **extra_env})
    try:
        yield fs
    finally:
        forkserver.stop()
    assert gone(fs.pid)


def run_where(rt, data):
    out = rt.run(zp.Pipeline("where", [zp.parquet("src", data), where]))["where"]
    return out.to_pylist()[0]


def test_workers_are_forks_of_the_server_and_run_in_the_callers_directory(
        data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with fork_server() as server, zp.Runtime(workers=2) as rt:
        pids = [w.pid for w in rt.pool.workers]
        assert [parent_of(p) for p in pids] == [server.pid, server.pid]
        assert server.forked == 2 and server.threads == 1
        assert all(w.preload_active for w in rt.pool.workers)
        got = run_where(rt, data)
    assert got["rows"] == 20_000 and got["cwd"] == str(tmp_path)
    assert all(gone(p) for p in pids)  # closing the runtime ended them


def test_a_worker_of_another_environment_starts_fresh(data, monkeypatch):
    with fork_server(ZERROW_TEST_OTHER="1") as server:
        with zp.Runtime(workers=1) as rt:
            assert parent_of(rt.pool.workers[0].pid) == os.getpid()
            assert run_where(rt, data)["rows"] == 20_000
        # The copy transport's workers have no preload library: not this server's either.
        monkeypatch.setenv("ZERROW_TEST_OTHER", "1")
        with zp.Runtime(workers=1, transport="copy") as rt:
            assert parent_of(rt.pool.workers[0].pid) == os.getpid()
        assert server.forked == 0


def test_a_killed_worker_is_reported_as_killed_and_replaced_by_a_fork(data):
    with fork_server() as server, zp.Runtime(workers=1) as rt:
        w = rt.pool.workers[0]
        assert isinstance(w.proc, forkserver.ForkedProcess) and w.proc.poll() is None
        os.kill(w.pid, signal.SIGKILL)
        assert describe_exit(w.proc.wait(10)) == "killed by signal SIGKILL"
        assert run_where(rt, data)["rows"] == 20_000  # the dead worker is found and replaced
        new = rt.pool.workers[0]
        assert new.pid != w.pid and parent_of(new.pid) == server.pid and server.forked == 2


def test_a_forked_process_answers_as_popen_does(data):
    with fork_server() as server, zp.Runtime(workers=1) as rt:
        proc = rt.pool.workers[0].proc
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(0.05)
        proc.kill()
        assert proc.wait(10) == -signal.SIGKILL and proc.poll() == -signal.SIGKILL
        proc.kill()  # reaped: a no-op, never a signal to a recycled pid
        assert run_where(rt, data)["rows"] == 20_000


def test_killing_the_server_ends_its_workers_and_runs_go_on_with_fresh_ones(data):
    with fork_server() as server, zp.Runtime(workers=2) as rt:
        before = [w.pid for w in rt.pool.workers]
        os.kill(server.pid, signal.SIGKILL)
        assert all(gone(p) for p in before)  # their PR_SET_PDEATHSIG
        assert run_where(rt, data)["rows"] == 20_000
        fresh = [w for w in rt.pool.workers if w.pid not in before]
        assert fresh and all(parent_of(w.pid) == os.getpid() for w in fresh)
        assert describe_exit(fresh[0].proc.poll()) == "still running"
