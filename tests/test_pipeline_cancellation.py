"""Cancelling a run from another thread (cancellation.py): no process started."""
import select
import threading

import pytest

from zerrow_pool.pipeline.cancellation import Cancellation


@pytest.fixture
def cancellation():
    c = Cancellation()
    yield c
    c.close()


def readable(cancellation, timeout=0.0) -> bool:
    return bool(select.select([cancellation], [], [], timeout)[0])


def test_cancel_sets_the_flag_and_wakes_a_select(cancellation):
    assert not cancellation.cancelled and not readable(cancellation)
    cancellation.cancel()
    assert cancellation.cancelled and readable(cancellation)


def test_arm_forgets_earlier_cancels_and_drains_their_wake_ups(cancellation):
    for _ in range(100):  # more wake-ups than one recv drains
        cancellation.cancel()
    cancellation.arm()
    assert not cancellation.cancelled and not readable(cancellation)
    cancellation.cancel()  # armed again: a new cancel counts
    assert cancellation.cancelled and readable(cancellation)


def test_a_cancel_from_another_thread_wakes_a_waiting_select(cancellation):
    cancellation.arm()
    threading.Timer(0.05, cancellation.cancel).start()
    assert readable(cancellation, timeout=10.0) and cancellation.cancelled


def test_cancel_after_close_does_nothing():
    c = Cancellation()
    c.close()
    c.cancel()  # a late cancel from another thread: no error
    assert c.cancelled
