"""zerrow on a Ray cluster: a 3-node ``ray.cluster_utils.Cluster`` on this machine, custom
resources pinning steps so that cross-machine edges really happen.

Results equal the local runtime's; edges inside a machine copy nothing; the bytes moved
between machines are exactly those of the edges that cross machines; a node raising fails
the run as it does locally; a Ray node killed mid-run has its steps re-run elsewhere, or
fails the run naming it when it held data still needed; survivors hold nothing after.
"""
import math
import os
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from zerrow_pool import demo_data
from zerrow_pool import pipeline as zp
from zerrow_pool.pipeline.demos import taxi_movement, taxi_zones
from zerrow_pool.pipeline.testing import make_parquet, require_zerrow

try:
    import ray
    from ray.cluster_utils import Cluster
except ImportError:
    ray = None

needs_ray = pytest.mark.skipif(ray is None, reason="ray is not installed (pip install '.[ray]')")
pytestmark = pytest.mark.slow

STORE = 200 * 2**20  # object store per Ray node
FLAG_DIR = "ZERROW_RAY_TEST_DIR"  # where mid-run nodes signal and wait (workers inherit it)


# ------------------------------------------------------------ test pipelines' nodes
@zp.node
def doubled(facts):
    return facts.append_column("twice", pc.multiply(facts["amount"], 2))


@zp.node
def boom(doubled):
    raise ValueError("boom from a node")


@zp.node
def held_up(doubled):
    """Signals that it started, then waits for the test to let it go."""
    flags = os.environ[FLAG_DIR]
    with open(os.path.join(flags, f"started-{os.getpid()}"), "w"):
        pass
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(flags, "go")) and time.monotonic() < deadline:
        time.sleep(0.05)
    return doubled.filter(pc.field("grp") < 8)


@zp.node
def summary(held_up):
    return held_up.group_by("grp").aggregate([("twice", "sum")]).sort_by("grp")


@zp.node
def joined(doubled, held_up):
    return pa.table({"rows": [doubled.num_rows + held_up.num_rows]})


# --------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    require_zerrow()
    flags = tmp_path_factory.mktemp("flags")
    os.environ[FLAG_DIR] = str(flags)  # before the raylets start: their workers inherit it
    c = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=1, resources={"m_a": 1}, object_store_memory=STORE, include_dashboard=False,
        # notice a killed node within about a second
        _system_config={"health_check_initial_delay_ms": 0, "health_check_period_ms": 300,
                        "health_check_failure_threshold": 3}))
    c.add_node(num_cpus=1, resources={"m_b": 1}, object_store_memory=STORE)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    return demo_data.generate(60_000, str(d), rows_per_file=20_000, row_group_rows=10_000)


@pytest.fixture
def facts(tmp_path):
    return make_parquet(tmp_path / "facts.parquet", rows=20_000, row_group_size=5_000)


@pytest.fixture
def flags(cluster):
    """The flag directory, emptied."""
    d = os.environ[FLAG_DIR]
    for name in os.listdir(d):
        os.unlink(os.path.join(d, name))
    return d


def local_run(pipeline, outputs=None):
    with zp.Runtime(workers=1) as rt:
        return rt.run(pipeline, outputs=outputs)


def assert_same_tables(got, want):
    """Equal schemas and values; floats to 1e-9 relative (Arrow's multi-threaded
    aggregates differ in the last bits from run to run, locally too)."""
    assert got.schema == want.schema
    for name in want.column_names:
        a, b = got[name].to_pylist(), want[name].to_pylist()
        if pa.types.is_floating(want.schema.field(name).type):
            assert all(math.isclose(x, y, rel_tol=1e-9) for x, y in zip(a, b)), name
            assert len(a) == len(b)
        else:
            assert a == b, name


def machines_of(report):
    return {n.name: n.machine for n in report.nodes}


def check_edges(report):
    """Edges whose ends ran on one machine copied nothing; the others moved exactly
    their bytes, and the run's transferred total is theirs."""
    where = machines_of(report)
    crossing = 0
    for e in report.edges:
        if where[e.src] == where[e.dst]:
            assert e.route == "share" and e.transferred == 0, e
            assert e.bytes_copied == 0 and e.bytes_zero_copy == e.bytes, e
        else:
            assert e.route == "transfer" and e.bytes > 0, e
            assert e.transferred == e.bytes, e
            crossing += e.bytes
    assert report.transferred_bytes == crossing
    return crossing


def assert_nothing_held(rt):
    for machine, held in rt.holdings().items():
        assert held == {"held": 0, "sent": 0, "runs": 0, "payloads": 0}, machine


# ------------------------------------------------------------------------ tests
def test_without_ray_runtime_and_cli_say_how_to_install(tmp_path):
    """Ray hidden from the interpreter: Runtime(ray=...) and --ray fail in one line."""
    script = tmp_path / "p.py"
    script.write_text("from zerrow_pool import pipeline as zp\n"
                      "@zp.node\ndef one():\n    import pyarrow as pa\n"
                      "    return pa.table({'x': [1]})\n")
    hide = "import sys; sys.modules['ray'] = None\n"
    code = hide + ("from zerrow_pool import pipeline as zp\n"
                   "from zerrow_pool.ray import RayUnavailable\n"
                   "try:\n    zp.Runtime(ray='auto')\n"
                   "except RayUnavailable as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("pip install 'zerrow-pool[ray]'")
    assert len(out.stdout.strip().splitlines()) == 1
    cli = hide + "from zerrow_pool.cli import main; raise SystemExit(main())"
    out = subprocess.run([sys.executable, "-c", cli, "run", str(script), "--ray", "auto"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("zerrow run: running on Ray needs the ray package")
    assert "pip install 'zerrow-pool[ray]'" in out.stderr
    assert "Traceback" not in out.stderr
    # without --ray, the same interpreter runs the pipeline as before
    out = subprocess.run([sys.executable, "-c", cli, "run", str(script), "--no-service", "-q"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


@needs_ray
@pytest.mark.parametrize("module, pins", [
    (taxi_zones, {"trips": "m_a", "zones": "m_b", "hourly": "m_b"}),
    (taxi_movement, {"trips": "m_a", "with_speed": "m_b", "ordered": "m_a"}),
], ids=["mixed", "movement"])
def test_example_pipelines_equal_local_and_move_only_cross_edges(cluster, data, module, pins):
    pipeline = module.build(data_dir=data)
    want = local_run(pipeline)
    with zp.Runtime(ray=cluster.address, pins=pins) as rt:
        got = rt.run(pipeline)
        assert set(got.outputs) == set(want.outputs)
        for name in want.outputs:
            assert_same_tables(got[name], want[name])
        where = machines_of(got.report)
        assert len(set(where.values())) == 2, where
        assert check_edges(got.report) > 0
        assert any(e.route == "share" for e in got.report.edges)
        assert_nothing_held(rt)


@needs_ray
def test_zerrow_run_with_ray_runs_the_file_unchanged(cluster, facts, tmp_path):
    script = tmp_path / "pipe.py"
    script.write_text("import pyarrow.compute as pc\n"
                      "from zerrow_pool import pipeline as zp\n"
                      f"facts = zp.parquet('facts', {str(facts)!r})\n"
                      "@zp.node\ndef big(facts):\n    return facts.filter(pc.field('amount') > 500)\n")
    out_file = tmp_path / "big.parquet"
    cli = "from zerrow_pool.cli import main; raise SystemExit(main())"
    out = subprocess.run([sys.executable, "-c", cli, "run", str(script), "--ray", cluster.address,
                          "-q", "--output", f"big={out_file}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pipeline pipe: done" in out.stdout
    assert " on " in out.stdout.split("big ")[1].splitlines()[0]  # the machine that ran it
    import pyarrow.parquet as pq
    want = local_run(zp.load_pipeline_file(str(script)))["big"]
    assert pq.read_table(out_file).equals(want)


@needs_ray
def test_a_dag_stays_on_one_machine_and_independent_dags_spread(cluster, facts):
    src = zp.parquet("facts", facts)
    one = zp.Pipeline("one", [src, doubled])
    two = zp.Pipeline("two", [zp.parquet("facts", facts), doubled])
    with zp.Runtime(ray=cluster.address) as rt:
        a, b = rt.run_many([one, two])
        for r in (a, b):
            assert len(set(machines_of(r.report).values())) == 1
            assert r.report.transferred_bytes == 0
            check_edges(r.report)
            assert_same_tables(r["doubled"], local_run(one)["doubled"])
        assert machines_of(a.report)["doubled"] != machines_of(b.report)["doubled"]
        # a later run over the same source goes where its decode cache already is
        again = rt.run(zp.Pipeline("again", [zp.parquet("facts", facts), doubled]))
        assert set(machines_of(again.report).values()) == {machines_of(a.report)["facts"]}
        assert again.report.cache_hits > 0 and again.report.cache_misses == 0


@needs_ray
def test_a_node_raising_fails_the_run_as_locally(cluster, facts):
    pipeline = zp.Pipeline("fails", [zp.parquet("facts", facts), doubled, boom])
    with pytest.raises(zp.NodeFailed) as local:
        local_run(pipeline)
    with zp.Runtime(ray=cluster.address, pins={"facts": "m_a", "boom": "m_b"}) as rt:
        with pytest.raises(zp.NodeFailed) as remote:
            rt.run(pipeline)
        assert str(remote.value) == str(local.value)
        rec = remote.value.report.node("boom")
        assert rec.status == "failed" and "ValueError: boom from a node" in rec.error
        assert remote.value.report.node("doubled").status == "done"
        assert_nothing_held(rt)
        # the agents stay usable; an intermediate asked for comes back too
        ok = rt.run(zp.Pipeline("ok", [zp.parquet("facts", facts), doubled]),
                    outputs=["facts", "doubled"])
        assert ok["facts"].num_rows == ok["doubled"].num_rows == 20_000


def descendants(pid: int) -> list:
    """Pids of the living descendants of ``pid`` (from /proc)."""
    children: dict = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _run_and_kill(cluster, flags, pipeline, pins):
    """Runs ``pipeline`` on the cluster plus a third node (resource m_c), kills that node
    once ``held_up`` has started, then lets ``held_up`` go. Returns the result, the
    killed machine's label and what the surviving agents still hold."""
    victim = cluster.add_node(num_cpus=1, resources={"m_c": 1}, object_store_memory=STORE)
    cluster.wait_for_nodes()
    with zp.Runtime(ray=cluster.address, pins=pins) as rt:
        nid, label = next((n, m.label) for n, m in rt.machines.items() if "m_c" in m.resources)
        agent_pid = ray.get(rt.agents[nid].describe.remote())["pid"]
        box = {}
        t = threading.Thread(target=lambda: box.update(result=rt.run(pipeline, raise_on_error=False)))
        t.start()
        deadline = time.monotonic() + 60
        while not any(n.startswith("started-") for n in os.listdir(flags)):
            assert time.monotonic() < deadline and t.is_alive(), "held_up never started"
            time.sleep(0.05)
        doomed = [agent_pid] + descendants(agent_pid)  # the agent and its zerrow workers
        assert len(doomed) > 1
        cluster.remove_node(victim, allow_graceful=False)
        open(os.path.join(flags, "go"), "w").close()
        t.join(120)
        assert "result" in box, "the run raised or hung"
        assert_nothing_held(rt)
        deadline = time.monotonic() + 30
        while [p for p in doomed if os.path.exists(f"/proc/{p}")] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in doomed if os.path.exists(f"/proc/{p}")], "processes outlived their node"
        return box["result"], label


@needs_ray
def test_a_killed_node_reruns_elsewhere_when_its_inputs_survive(cluster, facts, flags):
    def pipeline():
        return zp.Pipeline("rerun", [zp.parquet("facts", facts), doubled, held_up, summary])

    open(os.path.join(flags, "go"), "w").close()  # the local run goes straight through
    want = local_run(pipeline())
    for name in os.listdir(flags):
        os.unlink(os.path.join(flags, name))
    r, victim = _run_and_kill(cluster, flags, pipeline(), {"facts": "m_a", "held_up": "m_c"})
    assert r.ok, r.report.error
    assert_same_tables(r["summary"], want["summary"])
    assert victim not in machines_of(r.report).values()
    assert len([n for n in os.listdir(flags) if n.startswith("started-")]) == 2  # ran twice
    check_edges(r.report)


@needs_ray
def test_a_killed_node_holding_needed_data_fails_the_run_naming_it(cluster, facts, flags):
    # doubled is held on m_c, and read there by joined after held_up (on m_a) finishes,
    # when m_c is gone: joined cannot move, since the only copy of its input went with m_c.
    pipeline = zp.Pipeline("lost", [zp.parquet("facts", facts), doubled, held_up, joined])
    r, victim = _run_and_kill(cluster, flags, pipeline,
                              {"facts": "m_c", "held_up": "m_a", "joined": "m_c"})
    assert not r.ok
    assert f"machine {victim} was lost" in r.report.error
    assert "'doubled'" in r.report.error
    assert r.report.node("held_up").status == "done"
    assert r.report.node("joined").status == "skipped"


@zp.node
def left(facts):
    return facts


@zp.node
def right(left):
    return left


@zp.node
def both(left, right):
    return left


def test_fragments_never_depend_on_each_other_in_a_cycle(tmp_path):
    """left and both on one machine, right between them on another: merging left and
    both would make that fragment wait for itself, so they stay apart (no Ray needed)."""
    from zerrow_pool.ray.placement import Machine, fragments, place

    p = zp.Pipeline("diamond", [zp.parquet("facts", tmp_path / "x.parquet"), left, right, both])
    machines = [Machine("n1", "one", {"m_a": 1}), Machine("n2", "two", {"m_b": 1})]
    where = place([p], machines, {"facts": "m_a", "right": "m_b", "both": "m_a"})
    assert [where[("diamond", s)] for s in ("facts", "left", "right", "both")] == ["n1", "n1", "n2", "n1"]
    frags = fragments(p, where)
    assert [(f.machine, f.steps) for f in frags] == [
        ("n1", ["facts", "left"]), ("n2", ["right"]), ("n1", ["both"])]
    assert [sorted(f.deps) for f in frags] == [[], [0], [0, 1]]
    # without the detour through another machine, the whole DAG is one fragment
    where = place([p], machines, {"facts": "m_a"})
    assert [(f.machine, f.steps) for f in fragments(p, where)] == [
        ("n1", ["facts", "left", "right", "both"])]


def test_a_dag_larger_than_its_machine_spreads_its_branches(tmp_path):
    """With a source decoding to more than a machine's memory, the second branch of
    a fork goes to another machine; when it fits, the DAG stays together."""
    from zerrow_pool.ray.placement import Machine, decoded_bytes, place

    facts = zp.parquet("facts", make_parquet(tmp_path / "f.parquet", rows=4_000), columns=["key"])
    assert decoded_bytes(facts) >= 4_000 * 8  # the int64 key column, uncompressed
    p = zp.Pipeline("diamond", [facts, left, right, both])
    sizes = {("diamond", "facts"): decoded_bytes(facts)}
    small = [Machine("n1", "one", memory=10_000), Machine("n2", "two", memory=10_000)]
    where = place([p], small, sizes=sizes)
    assert [where[("diamond", s)] for s in ("facts", "left", "right", "both")] == ["n1", "n1", "n1", "n2"]
    big = [Machine("n1", "one", memory=10**9), Machine("n2", "two", memory=10**9)]
    assert set(place([p], big, sizes=sizes).values()) == {"n1"}
