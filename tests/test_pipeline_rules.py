"""The runtime's rules as plain functions and objects: no process started."""
import pyarrow as pa

from zerrow_pool.pipeline.decode_cache import DecodeCache, FileId, RowGroupRead
from zerrow_pool.pipeline.report import NodeRecord
from zerrow_pool.pipeline.run_state import may_retry
from zerrow_pool.pipeline.source_assembly import SourceAssembly


class FakePayload:
    def __init__(self, nbytes=10, rows=1):
        self.nbytes, self.closed, self.rows, self.stats = nbytes, False, rows, {}

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
