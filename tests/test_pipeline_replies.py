"""What becomes of a worker's reply (replies.py), over fake workers: no process started."""
import os

from test_run_state import FakePayload, new_run

from zerrow_pool.pipeline import run_state
from zerrow_pool.pipeline.dag import Pipeline, node, parquet
from zerrow_pool.pipeline.protocol import Done, Failed
from zerrow_pool.pipeline.replies import Replies
from zerrow_pool.pipeline.report import RunReport
from zerrow_pool.pipeline.run_state import RunState
from zerrow_pool.pipeline.states import Op, Status
from zerrow_pool.pipeline.tasks import Task
from zerrow_pool.pipeline.workers import WorkerLost


class FakePool:
    """Hands back the reply it was given for a worker, or raises ``WorkerLost``."""

    def __init__(self, reply=None, fds=(), lost=None):
        self.reply, self.fds, self.lost = reply, list(fds), lost

    def take_reply(self, w):
        w.task = None
        if self.lost:
            raise WorkerLost(self.lost)
        return self.reply, self.fds


class FakeTransport:
    def payload(self, spec, fds):
        return FakePayload(nbytes=spec)  # the tests' published "output" is its size


class FakeResources:
    def __init__(self):
        self.peaks = []

    def note_worker_peak(self, held_at_dispatch, task_peak):
        self.peaks.append((held_at_dispatch, task_peak))


class FakeSources:
    def __init__(self, retry):
        self.retry, self.decoded_tasks, self.failed = retry, [], []

    def decoded(self, task, reply, fds):
        self.decoded_tasks.append((task, reply, fds))

    def decode_failed(self, task, error):
        self.failed.append(error)
        return self.retry


class Loop:
    """The loop's side: what each callback was told, in order."""

    def __init__(self):
        self.told = []

    def replies(self, pool, sources=None):
        return Replies(pool, FakeTransport(), FakeResources(), sources,
                       complete=lambda run, name, payload, timing, peak: self.told.append(
                           ("complete", name, payload.nbytes, timing, peak)),
                       fail=lambda run, name, error: self.told.append(("fail", name, error)),
                       retry=lambda task, error: self.told.append(("retry", task.name, error)),
                       tidy=lambda: self.told.append(("tidy",)))


class FakeWorker:
    def __init__(self, task):
        self.task = task


@node(retries=1)
def flaky(src):
    return src


def sent(run, name, op=Op.NODE, held=0, **kw):
    """The task of step ``name`` as a worker runs it: started and sent once."""
    run_state.start(run, name, 0.0)
    run.rec[name].attempts += 1
    task = Task(run, name, op, **kw)
    task.held_at_dispatch = held
    return task


def is_open(fd):
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_an_output_completes_its_step_and_its_peak_is_noted_against_what_was_held():
    run, loop = new_run(), Loop()
    task = sent(run, "a", held=700)
    replies = loop.replies(FakePool(Done(result=42, timing={"total_s": 1.0}, peak=300), [5, 6]))
    replies.take(FakeWorker(task))
    assert loop.told == [("complete", "a", 42, {"total_s": 1.0}, 300)]
    assert replies.resources.peaks == [(700, 300)]


def test_a_failed_node_runs_again_within_its_retries_then_fails_its_step():
    run = RunState(Pipeline("p", [parquet("src", "/x.parquet"), flaky]), None,
                   RunReport("p", "copy", 1, False))
    loop = Loop()
    task = sent(run, "flaky")
    failed = Failed("Traceback...\nValueError: bad", "ValueError")
    loop.replies(FakePool(failed)).take(FakeWorker(task))
    run.rec["flaky"].attempts += 1  # the retry is sent
    loop.replies(FakePool(failed)).take(FakeWorker(task.again()))
    assert loop.told == [("retry", "flaky", failed.error), ("fail", "flaky", failed.error)]


def test_a_lost_worker_fails_its_task_saying_what_it_was_running():
    run, loop = new_run(), Loop()
    loop.replies(FakePool(lost="worker pid 7 killed by signal SIGKILL")).take(
        FakeWorker(sent(run, "a")))
    error = "worker pid 7 killed by signal SIGKILL while running node 'a'"
    assert loop.told == [("fail", "a", error)]


def test_a_reply_for_a_step_no_longer_running_is_dropped_with_its_descriptors():
    run, loop = new_run(), Loop()
    task = sent(run, "a")
    run.rec["a"].status = Status.SKIPPED
    r, w = os.pipe()
    loop.replies(FakePool(Done(result=1, timing={}, peak=0), [r, w])).take(FakeWorker(task))
    assert loop.told == [] and not is_open(r) and not is_open(w)
    # a failure's descriptors are closed too, and a step no longer running is not retried
    r, w = os.pipe()
    loop.replies(FakePool(Failed("boom", "RuntimeError"), [r, w])).take(FakeWorker(task))
    assert loop.told == [] and not is_open(r) and not is_open(w)


def test_a_decode_goes_to_the_source_reads_then_the_memory_policy_tidies():
    run, loop = new_run(), Loop()
    sources = FakeSources(retry=True)
    task = sent(run, "src", Op.DECODE, read=object(), columns=["x"])
    done = Done(result="parts", timing={"total_s": 0.5}, peak=10)
    loop.replies(FakePool(done, [3]), sources).take(FakeWorker(task))
    assert sources.decoded_tasks == [(task, done, [3])] and loop.told == [("tidy",)]


def test_a_failed_decode_is_retried_or_left_to_its_waiters_as_the_source_reads_say():
    run, loop = new_run(), Loop()
    task = sent(run, "src", Op.DECODE, read=object(), columns=["x"])
    failed = Failed("OSError: gone", "OSError")
    loop.replies(FakePool(failed), FakeSources(retry=True)).take(FakeWorker(task))
    assert loop.told == [("retry", "src", "OSError: gone")]
    no_retry = FakeSources(retry=False)  # the waiting sources fail there, not here
    loop.replies(FakePool(failed), no_retry).take(FakeWorker(task))
    assert no_retry.failed == ["OSError: gone"] and len(loop.told) == 1
