"""The runtime's rules as plain functions and objects: no process started."""
from zerrow_pool.pipeline.run_state import may_retry
from zerrow_pool.pipeline.decode_cache import DecodeCache


class FakePayload:
    def __init__(self, nbytes=10):
        self.nbytes, self.closed, self.rows = nbytes, False, 1

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
