"""The `zerrow` command: run a pipeline file, demo on a tiny dataset."""
import json
import os
import subprocess
import sys

import pytest

from zerrow_pool import demo_data


def _zerrow(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "zerrow_pool.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=timeout)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("demo") / "trips-tiny")
    demo_data.generate(60_000, d, rows_per_file=20_000, row_group_rows=10_000)
    return d


def test_generate_is_deterministic(tmp_path, tiny):
    d2 = demo_data.generate(60_000, str(tmp_path / "again"), rows_per_file=20_000,
                            row_group_rows=10_000)
    import pyarrow.parquet as pq
    a = pq.read_table(os.path.join(tiny, "trips"))
    b = pq.read_table(os.path.join(d2, "trips"))
    assert a.num_rows == 60_000 and a.equals(b)
    assert pq.read_table(os.path.join(tiny, "zones.parquet")).num_rows == demo_data.N_ZONES


def test_run_copy_transport_report(tiny, tmp_path):
    out = tmp_path / "rep.json"
    r = _zerrow("run", "examples/taxi_zones.py", "--transport", "copy", "--workers", "2",
                "--json", str(out), env={"ZERROW_DEMO_DIR": tiny},)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "with_borough" in r.stdout and "zero-copy rate" in r.stdout
    assert "> clean started" in r.stderr  # live progress
    rep = json.loads(out.read_text())
    assert rep["status"] == "done" and rep["transport"] == "copy"
    assert {n["name"] for n in rep["nodes"]} >= {"trips", "zones", "clean", "borough_stats"}


def test_run_reports_failure_and_bad_args(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from zerrow_pool import pipeline as zp\n\n@zp.node\ndef lonely(missing):\n"
                   "    return missing\n")
    r = _zerrow("run", str(bad), "--transport", "copy")
    assert r.returncode == 2 and "names no node" in r.stderr
    r = _zerrow("run", str(bad), "--memory-budget", "lots", "--transport", "copy")
    assert r.returncode == 2


def test_demo_tiny(tiny, tmp_path):
    root = tmp_path / "root"
    os.makedirs(root)
    os.symlink(tiny, root / "trips-60000")
    r = _zerrow("demo", "--rows", "60000", "--pipeline", "zones", "-q",
                env={"ZERROW_DATA": str(root)})
    assert r.returncode == 0, r.stderr + r.stdout
    assert "comparison" in r.stdout and "copy (warm)" in r.stdout
    from zerrow_pool.pipeline import zerrow_api
    if zerrow_api.available():
        assert "zerrow (warm cache)" in r.stdout and "shared zero-copy" in r.stdout
        # each pipeline ends with zerrow against copy, first run and second run
        import re
        ratios = re.findall(r"zerrow vs copy, (first|second) run .*?: ([0-9.]+)x as fast, "
                            r"([0-9.]+)x the machine's memory at peak$", r.stdout, re.M)
        assert [k for k, *_ in ratios] == ["first", "second"]
        assert all(float(speed) > 0 for _, speed, _ in ratios)
        assert "machine: the peak growth of every" in r.stdout


def test_run_no_cache_flag(tiny):
    from zerrow_pool.pipeline.testing import require_zerrow
    require_zerrow()
    r = _zerrow("run", "examples/taxi_zones.py", "--no-cache",
                "-q", "--workers", "1", env={"ZERROW_DEMO_DIR": tiny})
    assert r.returncode == 0, r.stderr + r.stdout
    assert "cache=off" in r.stdout and "decode cache:" not in r.stdout


def test_run_zerrow_transport(tiny):
    from zerrow_pool.pipeline.testing import require_zerrow
    require_zerrow()
    r = _zerrow("run", "examples/taxi_movement.py", "--workers", "2", "--memory-budget", "1G",
                env={"ZERROW_DEMO_DIR": tiny})
    assert r.returncode == 0, r.stderr + r.stdout
    assert "zero-copy rate 100.00%" in r.stdout
    assert "transport=zerrow" in r.stdout


SMALL = """\
import pyarrow as pa
import pyarrow.compute as pc
from zerrow_pool import pipeline as zp


@zp.node
def numbers():
    return pa.table({"n": pa.array(range(100), pa.int64())})


@zp.node
def squares(numbers):
    return numbers.append_column("sq", pc.multiply(numbers["n"], numbers["n"]))
"""


def _small(tmp_path):
    f = tmp_path / "small.py"
    f.write_text(SMALL)
    return str(f)


@pytest.mark.parametrize("where", [[], ["--no-service"]], ids=["service", "in-process"])
def test_run_writes_and_shows_outputs(tmp_path, where):
    import pyarrow as pa
    import pyarrow.parquet as pq
    f = _small(tmp_path)
    pq_out, ipc_out = tmp_path / "sq.parquet", tmp_path / "num.feather"
    r = _zerrow("run", f, "--transport", "copy", "--workers", "1", "-q", *where,
                "--output", f"squares={pq_out}", "--output", f"numbers={ipc_out}",
                "--show", "squares", "--show-rows", "3")
    assert r.returncode == 0, r.stderr + r.stdout
    got = pq.read_table(pq_out)
    assert got.column_names == ["n", "sq"] and got["sq"].to_pylist()[:4] == [0, 1, 4, 9]
    assert pa.ipc.open_file(str(ipc_out)).read_all()["n"].to_pylist() == list(range(100))
    assert "squares: 100 rows x 2 columns (first 3)" in r.stdout
    lines = r.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("squares: 100 rows"))
    assert lines[at + 1].split() == ["n", "sq"] and lines[at + 5].split() == ["2", "4"]


def test_failed_run_says_outputs_were_not_delivered(tmp_path):
    f = tmp_path / "fails.py"
    f.write_text(SMALL + "\n\n@zp.node\ndef broken(squares):\n    raise ValueError('no')\n")
    out = tmp_path / "sq.parquet"
    r = _zerrow("run", str(f), "--transport", "copy", "--workers", "1", "-q",
                "--output", f"squares={out}", "--show", "numbers")
    assert r.returncode == 1 and not out.exists()
    assert "the run failed, so --output/--show delivered nothing (squares, numbers)" in r.stderr


def test_run_help_explains_pipelines_outputs_and_sizes():
    r = _zerrow("run", "whatever.py", "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())  # argparse wraps lines to the terminal
    for part in ("@zp.node", "--output NODE=PATH", "--show NODE", ".feather", "4GB = 4GiB",
                 "ZERROW_COPY_DIR"):
        assert part in text, part
    r = _zerrow("demo", "--help")
    assert "0.7 GB of snappy Parquet" in " ".join(r.stdout.split())


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "--workers must be at least 1"),
    (["--memory-budget", "0"], "below the minimum of 1.0 MiB"),
    (["--memory-budget", "5"], "below the minimum of 1.0 MiB"),
    (["--memory-budget", "5iB"], "cannot parse size"),
    (["--json", "/nonexistent-dir/rep.json"], "directory /nonexistent-dir does not exist"),
    (["--output", "squares=out.csv"], "unknown format .csv"),
    (["--output", "squares"], "write NODE=PATH"),
    (["--output", "nope=x.parquet"], "no node named 'nope'"),
    (["--show", "nope"], "no node named 'nope'"),
])
def test_run_bad_options_fail_before_running(tmp_path, args, message):
    r = _zerrow("run", _small(tmp_path), "--transport", "copy", *args)
    assert r.returncode == 2, r.stderr + r.stdout
    assert message in r.stderr and "Traceback" not in r.stderr
    assert "pipeline small" not in r.stdout  # nothing ran


def test_run_bad_pipeline_paths(tmp_path):
    r = _zerrow("run", str(tmp_path))
    assert r.returncode == 2 and "is a directory" in r.stderr and "Traceback" not in r.stderr
    data = tmp_path / "d.parquet"
    data.write_bytes(b"PAR1")
    r = _zerrow("run", str(data))
    assert r.returncode == 2 and "zp.parquet" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "broken.py"
    bad.write_text("from zerrow_pool import pipeline as zp\n\ndef f(x:\n    return x\n")
    r = _zerrow("run", str(bad))
    assert r.returncode == 2, r.stderr
    assert f"syntax error in {bad}, line 3" in r.stderr and "Traceback" not in r.stderr
    raising = tmp_path / "raising.py"
    raising.write_text("import os\n\nLIMIT = os.environ['NO_SUCH_VARIABLE_X']\n")
    r = _zerrow("run", str(raising))
    assert r.returncode == 2, r.stderr
    assert f'File "{raising}", line 3' in r.stderr and "KeyError: 'NO_SUCH_VARIABLE_X'" in r.stderr
    assert "cli.py" not in r.stderr and "importlib" not in r.stderr and "dag.py" not in r.stderr


@pytest.mark.parametrize("args, message", [(["--rows", "-3"], "argument --rows: must be at least 1, not -3"),
                                           (["--workers", "0"], "argument --workers: must be at least 1, not 0"),
                                           (["--rows", "lots"], "argument --rows: 'lots' is not a whole number")])
def test_demo_refuses_bad_numbers_without_a_traceback(args, message):
    r = _zerrow("demo", *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_demo_comparison_marks_failed_runs():
    from zerrow_pool.cli import _compare
    from zerrow_pool.pipeline import RunReport

    ok = RunReport("p", "copy", 1, False, wall_s=2.0, status="done")
    failed = RunReport("p", "copy", 1, False, wall_s=1.25, status="failed",
                       error="node 'x' failed: CopyDirFull: no space")
    zr = RunReport("p", "zerrow", 1, True, wall_s=1.0, status="done")
    zr_cold = RunReport("p", "zerrow", 1, True, wall_s=1.0, status="done")
    zr_warm = RunReport("p", "zerrow", 1, True, wall_s=0.5, status="done")
    text = _compare([("copy", "cold", "copy (cold)", ok), ("copy", "warm", "copy (warm)", failed),
                     ("zerrow", "cold", "zerrow (cold)", zr_cold),
                     ("zerrow", "warm", "zerrow (warm)", zr_warm)])
    row = next(line for line in text.splitlines() if line.startswith("copy (warm)"))
    assert "FAILED" in row and "CopyDirFull" in row and "1.25" not in row
    # speed-ups compare like with like, and never against a run that failed
    assert "first run (cold workers, empty cache): 2.0x as fast" in text
    assert "second run" not in text
    # with the machine's memory measured, the memory ratio is that one, like with like
    machine = {("copy", "cold"): 4 << 30, ("copy", "warm"): 5 << 30,
               ("zerrow", "cold"): 3 << 30, ("zerrow", "warm"): 1 << 30}
    text = _compare([("copy", "cold", "copy (cold)", ok), ("zerrow", "cold", "zerrow (cold)", zr_cold)], machine)
    assert "2.0x as fast, 0.75x the machine's memory at peak\n" in text + "\n"
    row = next(line for line in text.splitlines() if line.startswith("zerrow (cold)"))
    assert row.endswith("3.0 GiB")


def test_peak_sampler_keeps_the_highest_reading_of_the_block():
    import threading

    from zerrow_pool.pipeline.machine_memory import PeakSampler

    readings = iter([10, 30, 70, 20] + [5] * 10_000)
    seen_peak = threading.Event()

    def read():
        value = next(readings)
        if value == 20:
            seen_peak.set()
        return value

    with PeakSampler(read) as sampler:  # 10 at construction
        assert seen_peak.wait(10)
    assert sampler.peak == 70


def test_machine_memory_counts_shared_memory_written():
    """A memfd filled with 256 MiB shows in the figure (Shmem), while it is held."""
    import time

    from zerrow_pool.pipeline.machine_memory import machine_memory

    # wait for the previous test's processes to finish exiting: two readings 8 MiB apart at most
    deadline = time.monotonic() + 30
    last = machine_memory()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = machine_memory()
        if abs(now - last) < 8 << 20:
            break
        last = now
    fd = os.memfd_create("machine-memory-test")
    try:
        before = machine_memory()
        os.ftruncate(fd, 256 << 20)
        os.pwrite(fd, b"\1" * (256 << 20), 0)
        assert machine_memory() - before >= 192 << 20
    finally:
        os.close(fd)


def test_report_names_counters_as_share_does():
    """The report names each counter as share() does (bytes_zero_copy, bytes_copied,
    bytes_exposed), and by nothing else."""
    from zerrow_pool.pipeline.report import EdgeRecord, NodeRecord, RunReport
    from zerrow_pool.pipeline.states import Status

    node = NodeRecord("n", "node", status=Status.DONE, bytes=100)
    node.bytes_zero_copy, node.bytes_copied, node.bytes_exposed = 90, 10, 7
    edge = EdgeRecord("n", "m", 100, 90, 10)
    report = RunReport("p", "zerrow", 1, False, nodes=[node], edges=[edge])
    for old in ("zero_copy", "copied", "exposed"):
        assert not hasattr(node, old) and not hasattr(edge, old), old
    d = report.to_dict()
    n, e = d["nodes"][0], d["edges"][0]
    assert (n["bytes_zero_copy"], n["bytes_copied"], n["bytes_exposed"]) == (90, 10, 7)
    assert (e["bytes_zero_copy"], e["bytes_copied"]) == (90, 10)
    assert not {"zero_copy", "copied", "exposed"} & (n.keys() | e.keys())
    assert report.zero_copy_rate == 0.9 and d["bytes_copied"] == report.bytes_copied == 10


SLOW = """\
import time
import pyarrow as pa
from zerrow_pool import pipeline as zp


@zp.node
def first():
    return pa.table({"x": pa.array(range(200_000), pa.int64())})


@zp.node
def slow(first):
    time.sleep(300)
    return first
"""


def _children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                pass
    return out


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _start_slow_run(tmp_path):
    import time
    f = tmp_path / "slow.py"
    f.write_text(SLOW)
    env = {**os.environ, "ZERROW_COPY_DIR": str(tmp_path)}
    # --no-service: the coordinator is the `zerrow run` process itself
    proc = subprocess.Popen([sys.executable, "-m", "zerrow_pool.cli", "run", str(f), "--transport",
                             "copy", "--workers", "2", "--no-service"], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    for line in proc.stderr:  # live progress: wait until the slow node is running
        if "> slow started" in line:
            break
    else:
        raise AssertionError("slow node never started")
    workers = _children(proc.pid)
    assert len(workers) == 2
    time.sleep(0.5)
    return proc, workers, env


def _wait_gone(pids, timeout=15):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    left = [p for p in pids if _alive(p)]
    for p in left:  # do not leave them behind when the test fails
        os.kill(p, 9)
    return left


def _run_dirs(tmp_path):
    return list(tmp_path.glob("zerrow-*/run-*"))


def test_sigkill_of_run_takes_workers_and_next_start_cleans(tmp_path):
    proc, workers, env = _start_slow_run(tmp_path)
    proc.kill()
    proc.wait()
    assert _wait_gone(workers) == [], "workers outlived a SIGKILLed coordinator"
    left = _run_dirs(tmp_path)  # nobody could clean up yet...
    # ...but the copy transport's file of `first` had no name: it went with the
    # processes that held its descriptors, leaving an empty directory
    assert len(left) == 1 and os.listdir(left[0]) == []
    r = _zerrow("run", _small(tmp_path), "--transport", "copy", "-q", "--workers", "1",
                "--no-service", env=env)
    assert r.returncode == 0, r.stderr
    assert _run_dirs(tmp_path) == []  # ...the next start did


def test_sigterm_stops_workers_and_cleans_up(tmp_path):
    import signal
    proc, workers, env = _start_slow_run(tmp_path)
    before = _run_dirs(tmp_path)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 143
    assert _wait_gone(workers) == []
    assert len(before) == 1 and _run_dirs(tmp_path) == []


WATCHED = """\
import sys, threading, time
from zerrow_pool import pipeline as zp

def go():
    rt = zp.Runtime(workers=1, transport="copy",
                    on_event=lambda ev: ev["event"] == "start" and ev["node"] == "slow"
                    and print("busy", flush=True))
    rt.run(zp.load_pipeline_file(sys.argv[1]))

threading.Thread(target=go, daemon=True).start()
time.sleep(300)
"""


def test_workers_started_from_a_thread_die_with_the_process(tmp_path):
    # PR_SET_PDEATHSIG is not used for them (it follows the starting thread):
    # the socket watchdog must end the busy worker.
    import time
    (tmp_path / "slow.py").write_text(SLOW)
    (tmp_path / "watched.py").write_text(WATCHED)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "watched.py"), str(tmp_path / "slow.py")],
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "ZERROW_COPY_DIR": str(tmp_path)})
    assert proc.stdout.readline().strip() == "busy"
    workers = _children(proc.pid)
    assert len(workers) == 1
    time.sleep(0.5)
    proc.kill()
    proc.wait()
    assert _wait_gone(workers) == []


LIMITED = '''
import pyarrow as pa
from zerrow_pool import pipeline as zp

@zp.node
def hog():
    blob = b"x" * (512 << 20)
    return pa.table({"n": [len(blob)]})

@zp.node
def small():
    return pa.table({"n": [1]})
'''


def test_run_node_memory_limit_and_isolation_flags(tmp_path):
    f = tmp_path / "limited.py"
    f.write_text(LIMITED)
    r = _zerrow("run", str(f), "--node-memory-limit", "lots", "-q")
    assert r.returncode == 2 and "--node-memory-limit: cannot parse size 'lots'" in r.stderr
    r = _zerrow("run", str(f), "--isolation", "vm", "-q")
    assert r.returncode == 2 and "invalid choice: 'vm'" in r.stderr
    r = _zerrow("run", str(f), "--node-memory-limit", "64M", "--workers", "1", "-q")
    assert r.returncode == 1, r.stderr + r.stdout
    assert "MemoryLimitExceeded" in r.stdout and "'hog'" in r.stdout, r.stdout
    r = _zerrow("run", str(f), "--isolation", "none", "--workers", "1", "-q", "--show", "small")
    assert r.returncode == 0, r.stderr + r.stdout
