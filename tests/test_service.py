"""The long-lived runtime service behind `zerrow run`: warm second runs, lifecycle, safety."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zerrow_pool.service import ServiceClient, ServiceMismatch
from zerrow_pool.service import protocol

PIPELINE = """
import os
import pyarrow.compute as pc
from zerrow_pool import pipeline as zp

sales = zp.parquet("sales", os.environ["SALES"], columns=["store", "amount"])

@zp.node
def doubled(sales):
    return sales.append_column("twice", pc.multiply(sales["amount"], 2))

@zp.node
def per_store(doubled):
    return doubled.group_by("store").aggregate([("twice", "sum")])
"""


@pytest.fixture
def svc_dir():
    d = tempfile.mkdtemp(prefix="zsvc-t-")
    os.chmod(d, 0o700)
    yield d
    ServiceClient(d).stop()
    import shutil
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def pipeline_file(tmp_path):
    data = tmp_path / "sales.parquet"
    rng = np.random.default_rng(1)
    pq.write_table(pa.table({"store": rng.integers(0, 20, 200_000),
                             "amount": rng.integers(0, 1000, 200_000)}), data, row_group_size=50_000)
    f = tmp_path / "sales_pipeline.py"
    f.write_text(PIPELINE)
    return str(f), str(data)


def zerrow(*args, svc_dir, env=None, timeout=120, **kw):
    full = {**os.environ, "ZERROW_SERVICE_DIR": svc_dir, **(env or {})}
    return subprocess.run([sys.executable, "-m", "zerrow_pool.cli", *args], capture_output=True,
                          text=True, env=full, timeout=timeout, **kw)


def run_json(pipeline, data, svc_dir, tmp_path, *extra, env=None):
    out = tmp_path / f"rep{time.monotonic_ns()}.json"
    r = zerrow("run", pipeline, "-q", "--workers", "2", "--json", str(out), *extra,
               svc_dir=svc_dir, env={"SALES": data, **(env or {})})
    assert r.returncode == 0, r.stderr + r.stdout
    return json.loads(out.read_text())


def wait_gone(pid, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.05)
    return False


def test_second_run_is_warm(pipeline_file, svc_dir, tmp_path):
    from zerrow_pool.pipeline.testing import require_zerrow
    require_zerrow()
    pipeline, data = pipeline_file
    assert ServiceClient(svc_dir).status() is None
    first = run_json(pipeline, data, svc_dir, tmp_path)
    status = ServiceClient(svc_dir).status()
    assert status is not None and status["runs_served"] == 1
    workers = set(status["runtimes"][0]["worker_pids"])
    second = run_json(pipeline, data, svc_dir, tmp_path)
    assert ServiceClient(svc_dir).status()["pid"] == status["pid"]
    # the same warm workers ran the second run, and the decode cache served its input
    assert {n["worker_pid"] for n in second["nodes"] if n["worker_pid"]} <= workers
    assert first["cache_hits"] == 0 and first["cache_misses"] > 0
    assert second["cache_hits"] == first["cache_misses"] and second["cache_misses"] == 0
    assert [n["rows"] for n in first["nodes"]] == [n["rows"] for n in second["nodes"]]


def test_same_results_as_in_process(pipeline_file, svc_dir, monkeypatch):
    from zerrow_pool import pipeline as zp
    pipeline, data = pipeline_file
    monkeypatch.setenv("SALES", data)
    res = ServiceClient(svc_dir).run(pipeline, runtime={"workers": 2},
                                     outputs=["per_store", "doubled"])
    assert res.ok and set(res.outputs) == {"per_store", "doubled"}
    with zp.Runtime(workers=2) as rt:
        local = rt.run(zp.load_pipeline_file(pipeline), outputs=["per_store", "doubled"])
    assert res["doubled"].equals(local["doubled"])
    assert res["per_store"].sort_by("store").equals(local["per_store"].sort_by("store"))


def test_no_service_stays_in_process(pipeline_file, svc_dir, tmp_path):
    pipeline, data = pipeline_file
    rep = run_json(pipeline, data, svc_dir, tmp_path, "--no-service")
    assert rep["status"] == "done"
    assert not os.path.exists(os.path.join(svc_dir, "service.sock"))
    assert ServiceClient(svc_dir).status() is None


def test_status_and_stop(pipeline_file, svc_dir, tmp_path):
    pipeline, data = pipeline_file
    r = zerrow("service", "status", svc_dir=svc_dir)
    assert r.returncode == 3 and "no zerrow service is running" in r.stdout
    run_json(pipeline, data, svc_dir, tmp_path)
    r = zerrow("service", "status", "--json", svc_dir=svc_dir)
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    pids = [status["pid"]] + status["runtimes"][0]["worker_pids"]
    r = zerrow("service", "stop", svc_dir=svc_dir)
    assert r.returncode == 0 and f"pid {status['pid']}" in r.stdout
    assert all(wait_gone(p) for p in pids), "service or a worker outlived `zerrow service stop`"
    assert not os.path.exists(os.path.join(svc_dir, "service.sock"))


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("PPid:"))


def test_the_first_runs_workers_are_forked_warm_and_end_with_the_service(
        pipeline_file, svc_dir, tmp_path):
    pipeline, data = pipeline_file
    run_json(pipeline, data, svc_dir, tmp_path)  # zerrow: the transport the service was started for
    status = ServiceClient(svc_dir).status()
    server = status["fork_server"]
    forked = status["runtimes"][0]["worker_pids"]
    assert server["forked"] == 2 and [parent_of(p) for p in forked] == [server["pid"]] * 2
    r = zerrow("service", "status", svc_dir=svc_dir)
    assert f"fork server pid {server['pid']}: 2 workers forked" in r.stdout, r.stdout
    # Another transport's workers have another environment (no preload library): fresh ones.
    assert run_json(pipeline, data, svc_dir, tmp_path, "--transport", "copy")["status"] == "done"
    status = ServiceClient(svc_dir).status()
    fresh = next(rt for rt in status["runtimes"] if rt["transport"] == "copy")["worker_pids"]
    assert [parent_of(p) for p in fresh] == [status["pid"]] * 2
    assert status["fork_server"]["forked"] == 2
    assert zerrow("service", "stop", svc_dir=svc_dir).returncode == 0
    assert all(wait_gone(p) for p in [status["pid"], server["pid"], *forked, *fresh])


def test_idle_exit(pipeline_file, svc_dir, tmp_path):
    pipeline, data = pipeline_file
    # long enough that the status call below comes well within it, even on a busy machine
    run_json(pipeline, data, svc_dir, tmp_path, env={"ZERROW_SERVICE_IDLE": "5"})
    status = ServiceClient(svc_dir).status()
    pids = [status["pid"]] + status["runtimes"][0]["worker_pids"]
    assert status["idle_s"] == 5
    assert all(wait_gone(p, timeout=30) for p in pids)
    assert not os.path.exists(os.path.join(svc_dir, "service.sock"))


def test_other_version_is_refused(pipeline_file, svc_dir, tmp_path, monkeypatch):
    pipeline, data = pipeline_file
    run_json(pipeline, data, svc_dir, tmp_path)
    real = protocol.identity()
    monkeypatch.setattr(protocol, "identity", lambda: {**real, "version": "0.0.1"})
    with pytest.raises(ServiceMismatch, match=r"zerrow version \S+ \(this command has 0\.0\.1\).*`zerrow service stop`"):
        ServiceClient(svc_dir).run(pipeline, runtime={})
    monkeypatch.undo()
    assert ServiceClient(svc_dir).status()["runs_served"] == 1  # still serving its own


def test_killed_client_cancels_its_run(tmp_path, svc_dir, pipeline_file):
    pipeline, data = pipeline_file
    marker = tmp_path / "node.pid"
    slow = tmp_path / "slow.py"
    slow.write_text(textwrap.dedent(f"""
        import os, time
        import pyarrow as pa
        from zerrow_pool import pipeline as zp

        @zp.node
        def sleepy():
            open({str(marker)!r}, "w").write(str(os.getpid()))
            time.sleep(120)
            return pa.table({{"x": [1]}})
    """))
    env = {**os.environ, "ZERROW_SERVICE_DIR": svc_dir}
    client = subprocess.Popen([sys.executable, "-m", "zerrow_pool.cli", "run", str(slow), "-q"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    worker = int(marker.read_text())
    client.send_signal(signal.SIGKILL)
    client.wait()
    assert wait_gone(worker), "the node kept running after its client was killed"
    deadline = time.monotonic() + 30  # the service replaces the killed worker, then is idle
    while (status := ServiceClient(svc_dir).status())["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status["running"] is None and worker not in status["runtimes"][0]["worker_pids"]
    assert run_json(pipeline, data, svc_dir, tmp_path)["status"] == "done"


def test_killed_service_is_replaced(pipeline_file, svc_dir, tmp_path):
    pipeline, data = pipeline_file
    run_json(pipeline, data, svc_dir, tmp_path)
    status = ServiceClient(svc_dir).status()
    os.kill(status["pid"], signal.SIGKILL)
    assert wait_gone(status["pid"])
    # Nothing of it lives on: its fork server and the workers forked from it end with it.
    leftovers = [status["fork_server"]["pid"], *status["runtimes"][0]["worker_pids"]]
    assert all(wait_gone(p) for p in leftovers), "a fork server or worker outlived its service"
    assert run_json(pipeline, data, svc_dir, tmp_path)["status"] == "done"
    assert ServiceClient(svc_dir).status()["pid"] != status["pid"]


def test_bad_pipeline_files_do_not_hurt_the_service(tmp_path, svc_dir, pipeline_file):
    pipeline, data = pipeline_file
    run_json(pipeline, data, svc_dir, tmp_path)
    pid = ServiceClient(svc_dir).status()["pid"]
    exits = tmp_path / "exits.py"
    exits.write_text("import sys\nsys.exit(3)\n")
    r = zerrow("run", str(exits), svc_dir=svc_dir)
    assert r.returncode == 2 and "sys.exit(3)" in r.stderr
    r = zerrow("run", str(tmp_path / "missing.py"), svc_dir=svc_dir)
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert "Traceback" not in r.stderr
    assert ServiceClient(svc_dir).status()["pid"] == pid


def test_service_dir_must_be_private(tmp_path, pipeline_file):
    pipeline, data = pipeline_file
    d = tempfile.mkdtemp(prefix="zsvc-open-")
    os.chmod(d, 0o755)
    try:
        r = zerrow("run", pipeline, svc_dir=d, env={"SALES": data})
        assert r.returncode == 2
        assert d in r.stderr and "--no-service" in r.stderr and "Traceback" not in r.stderr
        assert not os.path.exists(os.path.join(d, "service.sock"))
    finally:
        os.rmdir(d)


def test_two_clients_at_once(pipeline_file, svc_dir, tmp_path):
    pipeline, data = pipeline_file
    env = {**os.environ, "ZERROW_SERVICE_DIR": svc_dir, "SALES": data}
    procs = [subprocess.Popen([sys.executable, "-m", "zerrow_pool.cli", "run", pipeline, "-q"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert ServiceClient(svc_dir).status()["runs_served"] == 2


def test_mistaken_paths_start_no_service(tmp_path, svc_dir):
    """A path that is no pipeline file is refused before a service is started for it."""
    for path in (tmp_path, tmp_path / "missing.py", tmp_path / "data.parquet"):
        if path.name == "data.parquet":
            path.write_bytes(b"PAR1")
        r = zerrow("run", str(path), svc_dir=svc_dir)
        assert r.returncode == 2 and str(path) in r.stderr and "Traceback" not in r.stderr
    assert ServiceClient(svc_dir).status() is None
    assert not os.path.exists(os.path.join(svc_dir, "service.sock"))


MUTE_SERVICE = """
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); s.listen(4)
print("listening", flush=True)
conns = []
while True:
    conns.append(s.accept()[0])  # and never answer, like a service of another protocol
"""


def test_a_service_that_does_not_answer_is_named_and_stopped(svc_dir, monkeypatch):
    from zerrow_pool.service import ServiceError, client as client_mod

    monkeypatch.setattr(client_mod, "ANSWER_TIMEOUT_S", 1.0)
    c = ServiceClient(svc_dir)
    mute = subprocess.Popen([sys.executable, "-c", MUTE_SERVICE, c.sock_path],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert mute.stdout.readline().strip() == "listening"
        with pytest.raises(ServiceError, match=f"pid {mute.pid}.*`zerrow service stop` stops it"):
            c.status()
        assert c.stop() == mute.pid  # it cannot understand a stop request: SIGTERM
        assert mute.wait(10) == -signal.SIGTERM
    finally:
        mute.kill()
        mute.wait()


def test_an_internal_error_is_reported_to_the_client(pipeline_file, tmp_path):
    """A bug of ours while running ends that run with a message naming it and the log;
    the client is not told that the service stopped, and the service goes on."""
    from zerrow_pool._frame import recv_msg
    from zerrow_pool.service.server import RuntimeKey, Service

    class Broken:
        on_event = None

        def run(self, *a, **kw):
            raise RuntimeError("an invariant broke")

        def cancel(self):
            pass

    pipeline, data = pipeline_file
    req = {"pipeline": pipeline, "cwd": str(tmp_path), "env": {**os.environ, "SALES": data},
           "runtime": {"workers": 1}, "outputs": [], "progress": False}
    service = Service(str(tmp_path), idle_s=60)
    service._runtimes[RuntimeKey.of(req)] = Broken()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        service._run(ours, req)
        reply, fds = recv_msg(theirs)
    assert fds == [] and reply["kind"] == "error", reply
    assert "zerrow failed internally (RuntimeError: an invariant broke)" in reply["message"]
    assert os.path.join(str(tmp_path), "service.log") in reply["message"]
    assert service._run_lock.acquire(blocking=False)  # free for the next run


def test_an_output_made_of_spilled_columns_reaches_the_client(svc_dir, tmp_path, monkeypatch):
    """Under a budget ``src`` is spilled before ``widened`` passes its columns
    on; the client maps them from the spill files the service shares with it."""
    from zerrow_pool import pipeline as zp
    from zerrow_pool.pipeline.testing import make_parquet
    import spilling_pipeline

    data = make_parquet(tmp_path / "d.parquet", rows=200_000, row_group_size=20_000)
    monkeypatch.setenv("SPILL_TEST_DATA", data)
    res = ServiceClient(svc_dir).run(spilling_pipeline.__file__,
                                     runtime={"workers": 1, "memory_budget": "16M"},
                                     outputs=["widened"])
    assert res.ok, res.report
    with zp.Runtime(workers=1) as rt:
        local = rt.run(spilling_pipeline.build(data), outputs=["widened"])
    assert res["widened"].equals(local["widened"])
    assert res.report.spills > 0 and res.report.node("src").spilled, res.report.format()
    # The spilled source's decodes stay cached in the service, on disk, and status says so.
    cached = ServiceClient(svc_dir).status()["runtimes"][0]
    assert cached["cache_disk_bytes"] == cached["cache_bytes"] > 0, cached
    out = zerrow("service", "status", svc_dir=svc_dir).stdout
    assert "of it on disk" in out, out
