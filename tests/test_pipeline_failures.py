"""Failures: a raising node, a SIGKILLed worker, retries, and no leaks."""
import os
import signal
import time

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from zerrow_pool import pipeline as zp
from zerrow_pool.pipeline.testing import make_parquet, open_fds, shmem_bytes, zerrow_params

MARKER_ENV = "ZERROW_TEST_MARKER_DIR"


@zp.node
def grow(src):
    return src.append_column("twice", pc.multiply(src["amount"], 2))


@zp.node
def boom(grow):
    raise ValueError("bad row in boom")


@zp.node
def after_boom(boom):
    return boom


@zp.node
def side(grow):
    return grow.select(["key"])


@zp.node
def sigkill(grow):
    os.kill(os.getpid(), signal.SIGKILL)


@zp.node
def after_kill(sigkill):
    return sigkill


def _first_attempt(tag):
    path = os.path.join(os.environ[MARKER_ENV], tag)
    if os.path.exists(path):
        return False
    open(path, "w").close()
    return True


@zp.node(retries=1)
def flaky(grow):
    if _first_attempt("flaky"):
        raise RuntimeError("transient")
    return grow.select(["key", "twice"])


@zp.node(retries=2)
def flaky_kill(grow):
    if _first_attempt("flaky_kill"):
        os.kill(os.getpid(), signal.SIGKILL)
    return grow.select(["key"])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_parquet(tmp_path_factory.mktemp("fail") / "d.parquet", rows=20_000)


@pytest.fixture(params=zerrow_params())
def rt(request, tmp_path, monkeypatch):
    monkeypatch.setenv(MARKER_ENV, str(tmp_path))
    with zp.Runtime(workers=2, transport=request.param) as runtime:
        yield runtime


def test_raise_fails_node_and_skips_downstream(rt, data):
    p = zp.Pipeline("raise", [zp.parquet("src", data), grow, boom, after_boom, side])
    with pytest.raises(zp.NodeFailed, match="bad row in boom") as ei:
        rt.run(p)
    rep = ei.value.report
    assert rep.node("boom").status == "failed"
    assert "Traceback" in rep.node("boom").error and "ValueError" in rep.node("boom").error
    # the user's own frame, none of zerrow's worker internals
    assert "in boom" in rep.node("boom").error and "worker.py" not in rep.node("boom").error
    assert rep.node("after_boom").status == "skipped"
    assert rep.node("side").status == "done"  # independent branch still ran
    assert "node boom failed" in rep.format()


@pytest.mark.parametrize("isolation", ["process", "none"])
@pytest.mark.parametrize("transport", zerrow_params())
def test_sigkill_invocation_and_no_leak(transport, isolation, data):
    """A node that dies by SIGKILL fails alone; with isolation "process" only
    its invocation died (the zygote stays), with "none" the worker is replaced."""
    p = zp.Pipeline("kill", [zp.parquet("src", data), grow, sigkill, after_kill])
    with zp.Runtime(workers=2, transport=transport, isolation=isolation) as rt:
        rt.run(zp.Pipeline("warm", [zp.parquet("src", data), grow]))  # warm imports/caches
        shm0, fds0 = shmem_bytes(), open_fds()
        pids = {w.pid for w in rt.pool.workers}
        res = rt.run(p, raise_on_error=False)
        rep = res.report
        assert rep.status == "failed"
        assert "SIGKILL" in rep.node("sigkill").error
        assert rep.node("after_kill").status == "skipped"
        replaced = 0 if isolation == "process" else 1
        assert rep.workers_replaced == replaced
        assert len({w.pid for w in rt.pool.workers} - pids) == replaced
        # the next run works
        ok = rt.run(zp.Pipeline("after", [zp.parquet("src", data), grow]))
        assert ok["grow"].num_rows == 20_000
        del ok
        assert open_fds() <= fds0
        _assert_shmem_back(shm0)


def _assert_shmem_back(shm0, slack=4 << 20):
    for _ in range(50):  # the kernel frees a dead worker's memfds asynchronously
        if shmem_bytes() <= shm0 + slack:
            return
        time.sleep(0.1)
    assert shmem_bytes() <= shm0 + slack, f"Shmem grew by {shmem_bytes() - shm0} bytes"


def test_retries(rt, data):
    p = zp.Pipeline("retry", [zp.parquet("src", data), grow, flaky, flaky_kill])
    r = rt.run(p)
    assert r.report.node("flaky").attempts == 2
    assert r.report.node("flaky_kill").attempts == 2
    assert r["flaky"].num_rows == 20_000 and r["flaky_kill"].num_rows == 20_000


@pytest.mark.parametrize("transport", zerrow_params())
def test_nothing_left_after_close(transport, data, tmp_path, monkeypatch):
    monkeypatch.setenv(MARKER_ENV, str(tmp_path))
    shm0, fds0 = shmem_bytes(), open_fds()
    with zp.Runtime(workers=2, transport=transport) as rt:
        out_dir = rt.out_dir
        p = zp.Pipeline("x", [zp.parquet("src", data), grow, side, boom, after_boom])
        for _ in range(3):
            rt.run(p, outputs=(), raise_on_error=False)
        assert os.listdir(out_dir) == []  # every intermediate file dropped
        held = rt.resources.usage()
        if transport == "copy":
            assert held == 0
        else:  # only the decode cache is left
            assert held == rt.resources.usage() and rt.cache.nbytes > 0
    assert not os.path.exists(out_dir)
    assert open_fds() <= fds0
    _assert_shmem_back(shm0)


def test_decode_failure_fails_source_clearly(tmp_path):
    from zerrow_pool.pipeline.testing import require_zerrow
    require_zerrow()
    bad = tmp_path / "bad.parquet"
    make_parquet(bad, rows=1000, row_group_size=500)
    with zp.Runtime(workers=1, transport="zerrow") as rt:
        src = zp.parquet("src", bad, retries=1)
        rt.cache.plan(src)  # metadata cached, then the file is damaged in place
        data = bytearray(bad.read_bytes())
        data[100:400] = b"\0" * 300
        st = os.stat(bad)
        bad.write_bytes(bytes(data))
        os.utime(bad, ns=(st.st_atime_ns, st.st_mtime_ns))  # same identity: a stale plan
        res = rt.run(zp.Pipeline("bad", [src, grow]), raise_on_error=False)
        assert res.report.node("src").status == "failed"
        assert res.report.node("grow").status == "skipped"
        assert res.report.node("src").error


@zp.node
def sixteen_mb():
    import numpy as np
    return pa.table({"x": np.arange(2 << 20, dtype=np.int64)})


@zp.node
def after_big(sixteen_mb):
    return sixteen_mb.slice(0, 10)


@pytest.fixture
def small_tmpfs(tmp_path):
    import subprocess
    mnt = tmp_path / "small-shm"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_copy_transport_out_of_space_says_what_to_do(small_tmpfs, monkeypatch):
    monkeypatch.setenv("ZERROW_COPY_DIR", str(small_tmpfs))
    with zp.Runtime(workers=1, transport="copy") as rt:
        res = rt.run(zp.Pipeline("big", [sixteen_mb, after_big]), raise_on_error=False)
        assert os.listdir(rt.out_dir) == []  # the partial file is gone
    err = res.report.node("sixteen_mb").error
    assert "CopyDirFull" in err and str(small_tmpfs) in err
    assert "--shm-size" in err and "ZERROW_COPY_DIR" in err and "Traceback" not in err
    assert res.report.node("after_big").status == "skipped"


def test_output_not_kept_says_how_to_keep_it(data):
    with zp.Runtime(workers=1, transport="copy") as rt:
        res = rt.run(zp.Pipeline("keep", [zp.parquet("src", data), grow, side]))
    assert res["side"].num_rows == 20_000
    with pytest.raises(KeyError) as ei:
        res["grow"]
    assert isinstance(ei.value, zp.OutputNotKept)
    assert "outputs=['grow']" in str(ei.value)
    with pytest.raises(zp.OutputNotKept, match="no step named 'nope'"):
        res["nope"]


def test_report_explains_its_columns(data):
    with zp.Runtime(workers=1, transport="copy") as rt:
        text = rt.run(zp.Pipeline("cols", [zp.parquet("src", data), grow])).report.format()
    assert "exposed: " in text and "peak: " in text


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("transport", zerrow_params())
def test_a_missing_source_fails_it_and_the_runtime_goes_on(transport, cache, data, tmp_path):
    """A source whose file is gone fails that source (its path named, downstream
    skipped) whether it is read through the decode cache or by one read task; the
    runtime then runs the next pipeline."""
    missing = tmp_path / "gone.parquet"
    with zp.Runtime(workers=1, transport=transport, cache=cache) as rt:
        res = rt.run(zp.Pipeline("gone", [zp.parquet("src", missing), grow]),
                     raise_on_error=False)
        src = res.report.node("src")
        assert src.status == "failed" and "FileNotFoundError" in src.error, src.error
        assert str(missing) in src.error
        assert res.report.node("grow").status == "skipped"
        again = rt.run(zp.Pipeline("there", [zp.parquet("src", data), grow]))
        assert again.report.node("grow").status == "done"
