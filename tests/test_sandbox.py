"""Sandboxes (docs/SANDBOX.md): a node reads only what it is handed, starts
from clean state, and stays within its memory limit."""
import os
import stat
import subprocess
import sys
import tempfile

import pyarrow as pa
import pytest

import zerrow_pool
from zerrow_pool import pipeline as zp
from zerrow_pool.pipeline.cgroups import CgroupError, MemoryCgroups, _own_memory_cgroup
from zerrow_pool.pipeline.testing import shmem_bytes, zerrow_params

HERE = os.path.dirname(os.path.abspath(__file__))
SCENARIO = os.path.join(HERE, "sandbox_scenario.py")
NOBODY = 65534
pytestmark = pytest.mark.slow


def _shared_dir() -> str:
    """A directory the unprivileged user can write too (for the markers)."""
    d = tempfile.mkdtemp(prefix="zerrow-sandbox-test-")
    os.chmod(d, 0o777)
    return d


def _blocked(path: str):
    """(first ancestor of ``path`` others cannot enter, its child on the way) or None."""
    parts = os.path.realpath(path).split(os.sep)[1:]
    cur = "/"
    for part in parts:
        if not os.stat(cur).st_mode & stat.S_IXOTH:
            return cur, part
        cur = os.path.join(cur, part)
    return None


def _unprivileged(argv: list, keep: str) -> list:
    """``argv`` as user nobody, in a private mount namespace in which the
    directories the interpreter needs (e.g. under a 0700 /root) are reachable:
    a tmpfs covers each blocking directory, with only the needed entries bound
    back in. The host's mounts are untouched."""
    needed = {sys.base_prefix, sys.prefix, os.path.dirname(zerrow_pool.__file__),
              os.path.dirname(pa.__file__), HERE}
    blocked: dict = {}
    for p in needed:
        hit = _blocked(p)
        if hit:
            blocked.setdefault(hit[0], set()).add(hit[1])
    script = ["set -e"]
    for i, (d, children) in enumerate(sorted(blocked.items())):
        real = os.path.join(keep, str(i))
        script += [f"mkdir -p '{real}'", f"mount --bind '{d}' '{real}'",
                   f"mount -t tmpfs -o mode=0755 tmpfs '{d}'"]
        for c in sorted(children):
            script += [f"mkdir -p '{d}/{c}'", f"mount --bind '{real}/{c}' '{d}/{c}'"]
    script.append('exec setpriv --reuid=%d --regid=%d --clear-groups "$@"' % (NOBODY, NOBODY))
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(script),
            "sh"] + argv


def _run_scenario(transport, isolation, user):
    markers = _shared_dir()
    keep = tempfile.mkdtemp(prefix="zerrow-sandbox-keep-")
    argv = [sys.executable, SCENARIO, transport, isolation, markers]
    env = dict(os.environ, HOME=markers, TMPDIR=markers)
    env.pop("ZERROW_SERVICE_DIR", None)
    if user == "unprivileged":
        if os.geteuid() != 0:
            pytest.skip("making an unprivileged user's run needs root")
        if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode:
            pytest.skip("no mount namespace can be made here (a container without CAP_SYS_ADMIN)")
        argv = _unprivileged(argv, keep)
    try:
        r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    finally:
        subprocess.run(["rm", "-rf", markers, keep])
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("user", ["root", "unprivileged"])
@pytest.mark.parametrize("transport", zerrow_params())
def test_hostile_node_finds_nothing(transport, user):
    if user == "root" and os.geteuid() != 0:
        pytest.skip("the root case needs root")
    out = _run_scenario(transport, "process", user)
    assert out["euid"] == (0 if user == "root" else NOBODY)
    assert out["payroll_rows"] == 150_000  # payroll computed its secret and read its source
    assert out["found"] == []
    # every door was tried and shut: descriptors, memory, process_vm_readv, ptrace
    assert all(n > 0 for n in out["denied"].values()), out["denied"]


def test_hostile_node_finds_the_secret_without_sandbox():
    """The control: the same scan, run as root without sandboxes, finds it
    (so an empty result above means shut doors, not a blind scan)."""
    if os.geteuid() != 0:
        pytest.skip("the control runs as root")
    out = _run_scenario("zerrow", "none", "root")
    assert any("/fd/" in f for f in out["found"]), out["found"]


# ------------------------------------------------- state between pipelines
@zp.node
def tamper():
    pa.__zerrow_tampered__ = True  # a monkeypatch...
    import json

    json.zerrow_global = "left behind"  # ...and a global in a shared module
    return pa.table({"x": [1]})


@zp.node
def inspect_state():
    import json

    return pa.table({"patched": [hasattr(pa, "__zerrow_tampered__")],
                     "global": [getattr(json, "zerrow_global", None) is not None]})


@pytest.mark.parametrize("isolation", ["process", "none"])
def test_state_does_not_cross_pipelines(isolation):
    with zp.Runtime(workers=1, isolation=isolation) as rt:
        rt.run(zp.Pipeline("tamperer", [tamper]))
        seen = rt.run(zp.Pipeline("victim", [inspect_state]))["inspect_state"].to_pylist()[0]
        again = rt.run(zp.Pipeline("tamperer", [tamper, inspect_state]))
    if isolation == "process":
        assert seen == {"patched": False, "global": False}
        # a pipeline's own sandbox stays warm for it (its own state is its own)
        assert again["inspect_state"].to_pylist()[0] == {"patched": True, "global": True}
    else:  # the control: one warm interpreter carries it over
        assert seen == {"patched": True, "global": True}


# ------------------------------------------------------------ memory limits
@zp.node
def big_input():
    return pa.table({"v": pa.array(range(16 << 20), pa.int64())})  # 128 MiB


@zp.node(memory_limit="48M")
def reads_big(big_input):
    import pyarrow.compute as pc

    return pa.table({"sum": [pc.sum(big_input["v"]).as_py()]})


@zp.node(memory_limit="64M")
def hog(big_input):
    blob = b"x" * (512 << 20)  # 512 MiB of its own
    return pa.table({"n": [len(blob)]})


@zp.node
def after_hog(big_input):
    return pa.table({"rows": [big_input.num_rows]})


def _cgroups_or_skip():
    try:
        MemoryCgroups().close()
    except CgroupError as e:
        pytest.skip(f"no memory cgroup here: {e}")


def _cgroups_of(pids):
    """The cgroups the zygotes ``pids`` made (other runtimes may share our cgroup)."""
    own, _ = _own_memory_cgroup()
    return [n for n in os.listdir(own) if n in {f"zerrow-{p}" for p in pids}]


@pytest.mark.parametrize("transport", zerrow_params())
def test_node_over_its_limit_fails_alone(transport):
    _cgroups_or_skip()
    shm0 = shmem_bytes()
    p = zp.Pipeline("limits", [big_input, reads_big, hog, after_hog])
    with zp.Runtime(workers=1, transport=transport) as rt:
        zygotes = [w.pid for w in rt.pool.workers]
        assert _cgroups_of(zygotes)  # made at start, while the zygote lives
        res = rt.run(p, raise_on_error=False)
        rep = res.report
        err = rep.node("hog").error
        assert rep.node("hog").status == "failed"
        assert "MemoryLimitExceeded" in err and "'hog'" in err and "64.0 MiB" in err, err
        # its zero-copy input (128 MiB) is not charged to a 48 MiB node that reads it
        assert rep.node("reads_big").status == "done", rep.node("reads_big").error
        assert rep.node("after_hog").status == "done"  # the slot went on
        del res
    assert _cgroups_of(zygotes) == []
    import time

    for _ in range(50):  # the kernel frees dead processes' memfds asynchronously
        if shmem_bytes() <= shm0 + (8 << 20):
            break
        time.sleep(0.1)
    assert shmem_bytes() <= shm0 + (8 << 20)


@zp.node(memory_limit="64M")
def pool_hog(big_input):
    buf = pa.allocate_buffer(512 << 20)
    import time

    time.sleep(0.5)  # the pool samples its allocations every few ms
    return pa.table({"n": [buf.size]})


def test_limit_without_cgroup_falls_back_to_the_pool():
    with pytest.warns(RuntimeWarning, match="enforced by zerrow's pool"):
        with zp.Runtime(workers=1, isolation="none") as rt:
            rep = rt.run(zp.Pipeline("pool-limit", [big_input, pool_hog, after_hog]),
                         raise_on_error=False).report
    err = rep.node("pool_hog").error
    assert "MemoryLimitExceeded" in err and "64.0 MiB" in err, err
    assert rep.node("after_hog").status == "done"


@zp.node
def sandbox_pid(rows):
    return pa.table({"pid": [os.getpid()], "rows": [rows.num_rows]})


def _memfd_inodes(pid) -> set:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:"):
                inodes.add(os.stat(f"/proc/{pid}/fd/{fd}").st_ino)
        except OSError:  # closed meanwhile
            pass
    return inodes


def test_sandbox_keeps_no_descriptor_of_the_task_it_was_forked_for(tmp_path):
    """The zygote forks a sandbox while it holds the first task's input
    descriptors. The sandbox must close its copies: else each input's segment
    stays open for the sandbox's life, so its producer can never take it back
    and a decode-cache entry is never freed (and the next run's nodes fault in
    fresh memory instead of reusing it)."""
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"x": range(200_000)}), path, row_group_size=50_000)
    pipe = zp.Pipeline("fd_inherit", [zp.parquet("rows", str(path)), sandbox_pid])
    with zp.Runtime(workers=1) as rt:
        res = rt.run(pipe)
        assert res["sandbox_pid"]["rows"][0].as_py() == 200_000
        pid = res["sandbox_pid"]["pid"][0].as_py()
        del res
        cached = _memfd_inodes(os.getpid())  # the decode-cache entries, held here
        assert len(cached) >= 4, "expected one cached segment per row group at least"
        assert not _memfd_inodes(pid) & cached


def test_runtime_processes_are_not_dumpable():
    from zerrow_pool.pipeline.sandbox import is_dumpable

    with zp.Runtime(workers=1):
        assert not is_dumpable()  # the coordinator holds every intermediate's descriptors


def test_bad_isolation_and_limit_are_refused():
    with pytest.raises(ValueError, match="unknown isolation 'vm'"):
        zp.Runtime(workers=1, isolation="vm")
    with pytest.raises(zp.PipelineDefinitionError, match="memory_limit"):
        zp.node(memory_limit="lots")(lambda: None)


def test_shared_segments_show_no_stale_bytes():
    """A reader maps whole segments: the parts its buffers do not cover must
    not hold what the producer freed before (from a spare or a reclaimed segment)."""
    import mmap

    secret = b"ZSECRET-" + b"5" * 32

    def visible(share):
        for fd in share.fds:
            with mmap.mmap(fd, os.fstat(fd).st_size, prot=mmap.PROT_READ) as m:
                if m.find(secret) >= 0:
                    return True
        return False

    for keep_free in (False, True):
        with zerrow_pool.scope():  # freed before the share: a spare
            arr = pa.array([secret] * 400_000, pa.binary())
            del arr
        with zerrow_pool.scope():
            share = zerrow_pool.share(pa.array(range(1000)), seal=False, keep_free=keep_free)
        assert not visible(share)
        share.close()
        with zerrow_pool.scope():  # shared, then let go by its reader: lent, reclaimed
            arr = pa.array([secret] * 400_000, pa.binary())
            first = zerrow_pool.share(arr, seal=False, keep_free=keep_free)
        assert visible(first)  # the scan sees what is there
        del arr
        first.close()
        with zerrow_pool.scope():
            share = zerrow_pool.share(pa.array(range(1000)), seal=False, keep_free=keep_free)
        assert not visible(share)
        share.close()
