"""The runtime's rules as plain functions and objects: no process started."""
import warnings
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zerrow_pool.pipeline import run_state
from zerrow_pool.pipeline.budget import ResourceManager
from zerrow_pool.pipeline.dag import Pipeline, node, parquet
from zerrow_pool.pipeline.decode_cache import DecodeCache, FileId, RowGroupRead
from zerrow_pool.pipeline.options import RuntimeOptions
from zerrow_pool.pipeline.protocol import Done
from zerrow_pool.pipeline.report import NodeRecord, RunReport
from zerrow_pool.pipeline.run_state import RunState, may_retry
from zerrow_pool.pipeline.sandbox import Isolation
from zerrow_pool.pipeline.source_assembly import SourceAssembly
from zerrow_pool.pipeline.source_reads import SourceReads
from zerrow_pool.pipeline.specs import Kind, OutputCounters, Published, PublishedColumns
from zerrow_pool.pipeline.states import Op
from zerrow_pool.pipeline.tasks import Messages, Task


class FakePayload:
    def __init__(self, nbytes=10, rows=1):
        self.nbytes, self.closed, self.rows = nbytes, False, rows
        self.counters = OutputCounters()

    def memory(self):
        return {} if self.closed else {id(self): self.nbytes}

    def close(self):
        self.closed = True


def test_retry_rule():
    assert may_retry(1, 1) and may_retry(2, 2)
    assert not may_retry(1, 0) and not may_retry(3, 2)


def test_decode_waiters_first_starts_the_decode_and_all_get_the_entry():
    freed = []
    cache = DecodeCache(freed.append)
    got = []
    assert cache.wait("k", lambda e, err=None: got.append(("a", e.acquire(), err)))
    assert not cache.wait("k", lambda e, err=None: got.append(("b", e.acquire(), err)))
    assert cache.awaited("k")
    entry = cache.add("k", FakePayload(), 0.1)
    cache.resolve("k", entry)
    assert [g[0] for g in got] == ["a", "b"] and all(g[1] is entry for g in got)
    assert entry.refs == 2 and not cache.awaited("k")
    for _ in got:
        entry.release()
    assert not entry.payload.closed  # cached: kept for later runs
    cache.evict(entry)
    assert entry.payload.closed and freed == [entry]


def test_decode_failure_reaches_every_waiter_once():
    cache = DecodeCache(lambda e: None)
    errors = []
    cache.wait("k", lambda e, err=None: errors.append(err))
    cache.wait("k", lambda e, err=None: errors.append(err))
    cache.fail("k", "bad file")
    cache.fail("k", "again")  # nobody waits any more
    assert errors == ["bad file", "bad file"] and not cache.awaited("k")


def test_uncached_entry_lives_while_a_waiter_holds_it():
    cache = DecodeCache(lambda e: None, max_entry_bytes=5)  # too big to stay cached
    held = []
    cache.wait("k", lambda e, err=None: held.append(e.acquire()))
    entry = cache.add("k", FakePayload(nbytes=10), 0.1)
    cache.resolve("k", entry)
    assert not entry.payload.closed and entry.refs == 1
    held[0].release()
    assert entry.payload.closed


SCHEMA = pa.schema([("x", pa.int64()), ("y", pa.string())])
READS = [RowGroupRead(FileId("/data/f.parquet", 100, 1), rg, "") for rg in range(2)]


class Outcome:
    """What a source assembly ended with."""

    def __init__(self):
        self.payloads, self.errors, self.running = [], [], True

    def assembly(self):
        return SourceAssembly(SCHEMA, READS, wanted=lambda: self.running,
                              done=self.payloads.append, failed=self.fail)

    def fail(self, error):
        self.running = False
        self.errors.append(error)


def decode(cache, read, rows):
    """A worker decoded ``read``: its chunks, handed to whoever waits."""
    out = []
    for col in SCHEMA.names:
        key = cache.key(read, col)
        out.append(FakePayload(rows=rows))
        cache.resolve(key, cache.add(key, out[-1], 0.1))
    return out


def test_two_runs_decode_each_row_group_once_and_both_assemble_it():
    cache = DecodeCache(lambda e: None)
    first, second = Outcome(), Outcome()
    rec1, rec2 = NodeRecord("src", "source"), NodeRecord("src", "source")
    todo = first.assembly().request(cache, rec1)
    assert todo == [(READS[0], ["x", "y"]), (READS[1], ["x", "y"])]
    assert second.assembly().request(cache, rec2) == []  # waits for the same decodes
    assert (rec1.cache_misses, rec2.cache_misses) == (4, 4)
    decode(cache, READS[0], rows=3)
    assert first.payloads == second.payloads == []  # row group 1 still missing
    decode(cache, READS[1], rows=4)
    for outcome in (first, second):
        (payload,) = outcome.payloads
        assert payload.rows == 7 and payload.schema == SCHEMA
        assert [[e.key[1] for e in col] for col in payload.columns] == [[0, 1], [0, 1]]
    entry = cache.entries[cache.key(READS[0], "x")]
    assert entry.refs == 2  # one per assembled source
    third, rec3 = Outcome(), NodeRecord("src", "source")
    assert third.assembly().request(cache, rec3) == []
    assert third.payloads[0].rows == 7 and (rec3.cache_hits, rec3.cache_misses) == (4, 0)


def test_a_failed_decode_fails_the_source_once_and_lets_go_of_what_it_held():
    cache = DecodeCache(lambda e: None, max_entry_bytes=5)  # chunks too big to stay cached
    outcome = Outcome()
    outcome.assembly().request(cache, NodeRecord("src", "source"))
    held = decode(cache, READS[0], rows=3)
    assert not any(p.closed for p in held)  # the waiting source holds them
    for col in SCHEMA.names:
        cache.fail(cache.key(READS[1], col), "OSError: bad page")
    assert outcome.errors == ["OSError: bad page"] and outcome.payloads == []
    assert all(p.closed for p in held)


def test_a_decode_is_stored_per_column_costed_by_bytes_and_tracked_before_it_is_read():
    cache = DecodeCache(lambda e: None)
    tracked, got = [], []
    cache.wait(cache.key(READS[0], "y"), lambda e, err=None: got.append((e, list(tracked))))
    x, y = FakePayload(nbytes=30), FakePayload(nbytes=10)
    cache.store(READS[0], ["x", "y"], [x, y], 2.0, tracked.append)
    entry_x, entry_y = (cache.entries[cache.key(READS[0], c)] for c in ("x", "y"))
    assert entry_x.payload is x and entry_y.payload is y
    assert (entry_x.cost_s, entry_y.cost_s) == (1.5, 0.5)
    assert got == [(entry_y, [x, y])]  # y's waiter ran once y counted as held


# ------------------------------------------- sources read through the cache
class FakeTransport:
    """Turns a decoded part into a fake payload, keeping the fds it was given."""

    def payload(self, part, fds):
        out = FakePayload(nbytes=part.nbytes, rows=part.rows)
        out.fds = fds
        return out


class Steps:
    """What the loop was told: sources done or failed, entries tracked."""

    def __init__(self):
        self.done, self.failed, self.tracked = [], [], []

    def reads(self, cache):
        return SourceReads(cache, FakeTransport(), self.tracked.append,
                           done=lambda run, name, payload, timing, peak:
                           self.done.append((name, payload, dict(timing), peak)),
                           failed=lambda run, name, error: self.failed.append((name, error)))


def source_run(path, retries=0):
    pipeline = Pipeline("read", [parquet("src", str(path), columns=["x"], retries=retries)])
    run = RunState(pipeline, None, RunReport("read", "zerrow", 1, True))
    run_state.start(run, "src", 0.0)
    return run


def decode_reply(task, rows, peak, total_s):
    """A worker's reply to decode ``task``: one part per column, two fds each."""
    parts = [Published(Kind.SHARE, rows, 8 * rows, fds=(2 * i, 2)) for i in range(len(task.columns))]
    timing = {"total_s": total_s, "decode_s": total_s / 2}
    return Done(PublishedColumns(parts, rows), timing, peak), list(range(10, 10 + 2 * len(parts)))


@pytest.fixture
def two_row_groups(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"x": [1, 2, 3, 4, 5], "y": list("abcde")}), path, row_group_size=3)
    return path


def test_a_cached_source_is_planned_into_decodes_that_later_runs_wait_for(two_row_groups):
    steps, cache = Steps(), DecodeCache(lambda e: None)
    reads = steps.reads(cache)
    first, second = source_run(two_row_groups), source_run(two_row_groups)
    tasks = reads.start(first, first.pipeline.by_name["src"])
    assert [(t.op, t.read.row_group, t.columns) for t in tasks] == [
        (Op.DECODE, 0, ["x"]), (Op.DECODE, 1, ["x"])]
    assert tasks[0].schema.names == ["x", "y"]  # the file's schema: the worker reads by it
    assert reads.start(second, second.pipeline.by_name["src"]) == []  # the same decodes serve it
    assert all(reads.wanted(t) for t in tasks)
    reads.decoded(tasks[0], *decode_reply(tasks[0], rows=3, peak=50, total_s=2.0))
    assert steps.done == [] and len(steps.tracked) == 1  # tracked as soon as it is stored
    assert steps.tracked[0].fds == [10, 11]
    reads.decoded(tasks[1], *decode_reply(tasks[1], rows=2, peak=30, total_s=1.0))
    assert not any(reads.wanted(t) for t in tasks)
    (name, payload, timing, peak), _ = steps.done
    assert name == "src" and payload.rows == 5 and payload.schema.names == ["x"]
    assert timing == {"total_s": 3.0, "decode_s": 1.5} and peak == 50  # the first run's decodes
    third = source_run(two_row_groups)
    assert reads.start(third, third.pipeline.by_name["src"]) == []  # all cached: done at once
    assert len(steps.done) == 3 and steps.done[2][1].rows == 5


def test_a_decode_is_retried_within_its_sources_retries_then_fails_every_waiter(two_row_groups):
    steps, cache = Steps(), DecodeCache(lambda e: None)
    reads = steps.reads(cache)
    run, other = source_run(two_row_groups, retries=1), source_run(two_row_groups, retries=1)
    tasks = reads.start(run, run.pipeline.by_name["src"])
    reads.start(other, other.pipeline.by_name["src"])
    assert reads.decode_failed(tasks[0], "OSError: bad page")  # the first failure is retried
    assert steps.failed == [] and reads.wanted(tasks[0])
    assert not reads.decode_failed(tasks[0], "OSError: bad page")
    assert steps.failed == [("src", "OSError: bad page")] * 2 and not reads.wanted(tasks[0])


def test_a_source_that_cannot_be_planned_raises_and_queues_nothing(tmp_path):
    steps = Steps()
    run = source_run(tmp_path / "missing.parquet")
    with pytest.raises(FileNotFoundError):
        steps.reads(DecodeCache(lambda e: None)).start(run, run.pipeline.by_name["src"])


# ------------------------------------------------------- worker messages
@node(memory_limit="64M")
def limited(src):
    return src


@node
def unlimited(src):
    return src


def message_for(step_name, op=Op.NODE, *, source=__file__, budget=None, strict=False, isolation=Isolation.PROCESS,
                node_limit=None, cgroup_error=None, held=0, running=1, messages=None):
    pipeline = Pipeline("msg", [parquet("src", source), limited, unlimited])
    run = RunState(pipeline, None, RunReport("msg", "zerrow", 1, False))
    if messages is None:
        options = RuntimeOptions.resolve(workers=1, memory_budget=budget, strict_budget=strict,
                                         isolation=isolation, node_memory_limit=node_limit)
        messages = Messages(options, "/out", ResourceManager(budget, None, None, 0.0))
    task = Task(run, step_name, op)
    task.held_at_dispatch = held
    msg, fds = messages.build(task, SimpleNamespace(cgroup_error=cgroup_error), running)
    return msg, messages


def test_only_nodes_without_a_budget_give_freed_pages_back_at_once(two_row_groups):
    assert message_for("unlimited")[0].keep_free
    assert not message_for("src", Op.READ, source=two_row_groups)[0].keep_free
    assert not message_for("unlimited", budget=1000)[0].keep_free


def test_a_strict_budget_caps_each_task_at_its_share_of_the_headroom(two_row_groups):
    msg, _ = message_for("src", Op.READ, source=two_row_groups, budget=1000, strict=True, held=400, running=3)
    assert msg.mem_cap == 200
    assert message_for("unlimited", budget=1000)[0].mem_cap is None


def test_a_nodes_own_memory_limit_wins_over_the_runtimes():
    assert message_for("limited", node_limit=1 << 30)[0].memory_limit == 64 << 20
    assert message_for("unlimited", node_limit=1 << 30)[0].memory_limit == 1 << 30
    assert message_for("unlimited")[0].memory_limit is None


def test_a_limit_the_kernel_cannot_enforce_warns_once_per_runtime():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        message_for("limited")  # in a sandbox's cgroup: no warning
        message_for("unlimited", cgroup_error="no cgroup v2 here")  # no limit: no warning
        _, messages = message_for("limited", cgroup_error="no cgroup v2 here")
        message_for("limited", cgroup_error="no cgroup v2 here", messages=messages)
        message_for("limited", isolation=Isolation.NONE)  # another runtime
    assert [w.category for w in caught] == [RuntimeWarning] * 2
    assert str(caught[0].message).endswith("not by the kernel: no cgroup v2 here")
    assert 'isolation "none" runs many nodes in one process' in str(caught[1].message)
