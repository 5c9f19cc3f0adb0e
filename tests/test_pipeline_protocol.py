"""The coordinator <-> worker messages as typed data: no process started."""
import os
import socket
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from zerrow_pool.pipeline.budget import ResourceManager
from zerrow_pool.pipeline.dag import Pipeline, node, parquet
from zerrow_pool.pipeline.decode_cache import FileId, RowGroupRead
from zerrow_pool.pipeline.options import RuntimeOptions
from zerrow_pool.pipeline.payloads import SharePayload
from zerrow_pool.pipeline.protocol import (DecodeRequest, Done, Failed, Hello, NodeRequest,
                                           ReadRequest, Stop)
from zerrow_pool.pipeline.report import RunReport
from zerrow_pool.pipeline.run_state import RunState
from zerrow_pool.pipeline.specs import Kind, Published, PublishedColumns, ShareInput
from zerrow_pool.pipeline.states import Op
from zerrow_pool.pipeline.tasks import Messages, Task
from zerrow_pool.pipeline.wire import close_fds, recv_msg, send_msg
from zerrow_pool.pipeline.worker import memory_cap


@node(memory_limit="64M")
def limited(src):
    return src


@pytest.fixture
def sockets():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def pipe_fds():
    """Four descriptors of one pipe, to send beside a message."""
    r, w = os.pipe()
    fds = [r, w, os.dup(r), os.dup(w)]
    yield fds
    close_fds(fds)


def round_trip(sockets, msg, fds=()):
    """``msg`` and its fds as the other end receives them (the caller closes the fds)."""
    a, b = sockets
    send_msg(a, msg, fds)
    return recv_msg(b)


def same_files(sent, got):
    return [(os.fstat(f).st_dev, os.fstat(f).st_ino) for f in sent] == \
        [(os.fstat(f).st_dev, os.fstat(f).st_ino) for f in got]


def test_a_node_request_crosses_the_socket_with_its_inputs_descriptors(sockets, pipe_fds):
    request = NodeRequest(name="n", out_dir="/out", fn=limited.ref,
                          inputs=[ShareInput(b"d0", (0, 1)), ShareInput(b"d1", (1, 3))],
                          inputs_as=("arrow", "pandas"), memory_limit=64 << 20, sandbox="code",
                          keep_free=True, mem_cap=1000)
    got, fds = round_trip(sockets, request, pipe_fds)
    try:
        assert got == request and type(got) is NodeRequest and got.op == Op.NODE
        assert not got.limit_by_kernel and same_files(pipe_fds, fds)
    finally:
        close_fds(fds)


def test_read_decode_and_stop_requests_cross_the_socket(sockets):
    read = ReadRequest(name="src", out_dir="/out", files=["/a.parquet", "/b.parquet"],
                       columns=["x"], filter=None, mem_cap=5)
    assert round_trip(sockets, read) == (read, [])
    schema = pa.schema([("x", pa.int64()), ("y", pa.string())])
    decode = DecodeRequest(name="src", out_dir="/out", file="/a.parquet", row_group=3,
                           columns=["y"], schema=schema, filter=pc.field("x") > 1)
    got, fds = round_trip(sockets, decode)
    assert fds == [] and type(got) is DecodeRequest and got.op == Op.DECODE
    assert (got.name, got.out_dir, got.file, got.row_group, got.columns) == (
        "src", "/out", "/a.parquet", 3, ["y"])
    assert got.schema.equals(schema) and got.filter.equals(pc.field("x") > 1)
    assert (got.keep_free, got.mem_cap) == (False, None)
    assert round_trip(sockets, Stop()) == (Stop(), [])
    assert Stop().op == Op.STOP


def test_hello_and_replies_cross_the_socket(sockets, pipe_fds):
    hello = Hello(1234, True, "no cgroup v2 here")
    assert round_trip(sockets, hello) == (hello, [])
    assert Hello(1, False).cgroup_error is None  # a plain worker: no cgroup to speak of
    parts = [Published(Kind.SHARE, 3, 24, descriptor=b"a", fds=(0, 2)),
             Published(Kind.SHARE, 3, 24, descriptor=b"b", fds=(2, 2))]
    done = Done(PublishedColumns(parts, 3), {"total_s": 0.5, "cpu_user_s": 0.25}, 4096)
    got, fds = round_trip(sockets, done, pipe_fds)
    try:
        assert got == done and same_files(pipe_fds, fds)
        assert got.ok and not got.exiting
    finally:
        close_fds(fds)
    failed = Failed("BudgetExceeded: too much", "BudgetExceeded", exiting=True)
    got, fds = round_trip(sockets, failed)
    assert (got, fds) == (failed, []) and not got.ok and got.exiting and got.peak == 0
    assert not Failed("ValueError: x", "ValueError").exiting


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"x": [1, 2, 3], "y": list("abc")}), path)
    return path


def build(task, *, budget=None, strict=False, held=0, running=1):
    options = RuntimeOptions.resolve(workers=1, memory_budget=budget, strict_budget=strict)
    messages = Messages(options, "/out", ResourceManager(budget, None, None, 0.0))
    task.held_at_dispatch = held
    return messages.build(task, SimpleNamespace(cgroup_error=None), running)


def run_of(source):
    pipeline = Pipeline("p", [parquet("src", str(source), columns=["x"]), limited])
    return RunState(pipeline, None, RunReport("p", "zerrow", 1, False))


def test_a_nodes_request_carries_its_function_inputs_and_memory_terms(source, pipe_fds):
    run = run_of(source)
    task = Task(run, "limited", Op.NODE)
    task.pinned = [SharePayload(b"desc", pipe_fds[:2], 3, 24)]
    request, fds = build(task)
    assert type(request) is NodeRequest
    assert request.inputs == [ShareInput(b"desc", (0, 2))] and fds == pipe_fds[:2]
    assert (request.name, request.out_dir, request.fn) == ("limited", "/out", limited.ref)
    assert request.sandbox == run.sandbox and request.inputs_as == limited.inputs_as
    assert request.memory_limit == 64 << 20 and not request.limit_by_kernel
    assert request.keep_free and request.mem_cap is None  # no budget: pages back at once
    request, _ = build(task, budget=1000, strict=True, held=100, running=3)
    assert not request.keep_free and request.mem_cap == 300
    assert request.expected_bytes == 0  # never ran: no hint for its pool


def test_a_nodes_request_carries_what_it_allocated_last_time_also_when_retried(source):
    task = Task(run_of(source), "limited", Op.NODE, expected_peak=123 << 20)
    assert build(task)[0].expected_bytes == 123 << 20
    assert build(task.again())[0].expected_bytes == 123 << 20


def test_an_idle_pool_hands_a_step_its_previous_worker_when_it_can():
    from zerrow_pool.pipeline.workers import WorkerPool

    pool = object.__new__(WorkerPool)  # no processes: the choice only reads ids and tasks
    pool.workers = [SimpleNamespace(id=i, task=None) for i in (4, 5, 6)]
    assert pool.pick_idle(5).id == 5
    assert pool.pick_idle(None).id == 4 and pool.pick_idle(9).id == 4  # unknown or replaced
    pool.workers[1].task = object()  # busy: another idle worker, not a wait
    assert pool.pick_idle(5).id == 4


def test_a_sources_request_reads_it_whole(source):
    run = run_of(source)
    files = run.pipeline.by_name["src"].files()  # listed when the source starts
    request, fds = build(Task(run, "src", Op.READ, files=files), budget=1000, strict=True,
                         held=400, running=2)
    assert type(request) is ReadRequest and fds == []
    assert (request.files, request.columns, request.filter) == ([str(source)], ["x"], None)
    assert (request.keep_free, request.mem_cap) == (False, 300)


def test_a_decodes_request_names_its_row_group(source):
    schema = pq.read_schema(source)
    read = RowGroupRead(FileId.of(str(source)), 0, "")
    request, fds = build(Task(run_of(source), "src", Op.DECODE, read=read, columns=["x"],
                              schema=schema))
    assert type(request) is DecodeRequest and fds == []
    assert (request.file, request.row_group, request.columns) == (os.path.abspath(source), 0, ["x"])
    assert request.schema is schema and request.filter is None
    assert (request.keep_free, request.mem_cap) == (False, None)  # cached decodes stay whole


def node_request(**terms):
    return NodeRequest(name="n", out_dir="/out", fn=limited.ref, inputs=[], **terms)


def test_memory_cap_is_the_smaller_of_the_budgets_share_and_the_pools_limit():
    assert memory_cap(node_request()) is None
    assert memory_cap(node_request(mem_cap=500)) == (500, "budget")
    assert memory_cap(node_request(memory_limit=200)) == (200, "limit")
    assert memory_cap(node_request(memory_limit=200, mem_cap=500)) == (200, "limit")
    assert memory_cap(node_request(memory_limit=900, mem_cap=500)) == (500, "budget")
    # a cgroup enforces the node's limit: the pool leaves it to the kernel
    assert memory_cap(node_request(memory_limit=200, limit_by_kernel=True)) is None
    read = ReadRequest(name="src", out_dir="/out", files=["/a.parquet"], mem_cap=7)
    assert memory_cap(read) == (7, "budget")
