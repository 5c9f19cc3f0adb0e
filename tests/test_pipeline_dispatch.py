"""The dispatcher (dispatch.py) over fake workers and a fake memory policy: no process started."""
from test_run_state import FakePayload, new_run as new_diamond_run

from zerrow_pool.pipeline import run_state
from zerrow_pool.pipeline.dispatch import Dispatcher
from zerrow_pool.pipeline.states import Op, Status
from zerrow_pool.pipeline.step_history import StepHistory
from zerrow_pool.pipeline.tasks import Task
from zerrow_pool.pipeline.workers import WorkerPool


class FakeWorker:
    """A worker slot: ``dead`` ones fail to take a message, as a process gone while idle."""

    def __init__(self, wid, pid, dead=False):
        self.id, self.pid, self.dead, self.task, self.sent = wid, pid, dead, None, []

    def send(self, msg, fds=()):
        if self.dead:
            raise OSError("broken pipe")
        self.sent.append(msg)


def fake_pool(*workers):
    """A real ``WorkerPool`` (its choices and bookkeeping) over fake workers; a dead
    worker is replaced in its slot by a live one with the next pid."""
    pool = object.__new__(WorkerPool)
    pool.workers, pool.replaced = list(workers), 0

    def replace(dead):
        pool.workers[pool.workers.index(dead)] = FakeWorker(dead.id, dead.pid + 100)
        pool.replaced += 1

    pool.replace = replace
    return pool


class FakeMemory:
    """Admits a task whose estimate is at most ``room``; records what it was asked."""

    def __init__(self, room=10**9):
        self.room, self.asked = room, []

    def admit(self, need, own_inputs, running_inputs, runs):
        self.asked.append((need, own_inputs, running_inputs, list(runs)))
        return need <= self.room


class FakeMessages:
    def build(self, task, worker, running):
        return ("request", task.name, running), []


class FakeResources:
    def __init__(self, held=0):
        self.held = held

    def usage(self):
        return self.held


class FakeSources:
    def __init__(self, wanted):
        self._wanted = wanted

    def wanted(self, task):
        return self._wanted


def new_run():
    """A run of test_run_state's diamond (src -> a, b; (a, b) -> c ...) holding src."""
    run = new_diamond_run()
    run.payloads["src"] = FakePayload(label="src")
    return run


def running(run, *names):
    for name in names:
        run_state.start(run, name, 0.0)


def dispatcher(pool, memory=None, *, runs=(), sources=None, held=0):
    started = []
    d = Dispatcher(pool=pool, memory=memory or FakeMemory(), messages=FakeMessages(),
                   resources=FakeResources(held), history=StepHistory(1.0), sources=sources,
                   runs=list(runs), started=lambda run, name: started.append(name))
    return d, started


def test_tasks_go_in_queue_order_each_to_its_steps_last_worker_when_that_one_is_idle():
    run = new_run()
    running(run, "a", "b")
    pool = fake_pool(FakeWorker(0, 100), FakeWorker(1, 101))
    d, started = dispatcher(pool)
    d.history.sent(run, "b", 0)  # b ran in slot 0 last time
    d.add([Task(run, "a", Op.NODE), Task(run, "b", Op.NODE)])
    d.dispatch()
    # a takes the first idle worker (it has no history); b's slot 0 is busy then: slot 1
    assert [w.task.name for w in pool.workers] == ["a", "b"]
    assert started == ["a", "b"] and not d.waiting
    assert pool.workers[1].sent == [("request", "b", 2)]  # sent with one other task running
    assert (run.rec["b"].attempts, run.rec["b"].worker_pid) == (1, 101)
    assert d.history.last_slot(run, "b") == 1


def test_a_task_not_admitted_keeps_its_place_and_the_tasks_behind_it_may_go_first():
    run = new_run()
    running(run, "a", "b")
    pool = fake_pool(FakeWorker(0, 100), FakeWorker(1, 101))
    memory = FakeMemory(room=50)
    d, started = dispatcher(pool, memory, runs=[run])
    big, small = Task(run, "a", Op.NODE, estimate=100), Task(run, "b", Op.NODE, estimate=10)
    d.add([big, small])
    d.dispatch()
    assert started == ["b"] and d.waiting and run.rec["a"].attempts == 0
    src = run.payloads["src"]
    assert memory.asked[0] == (100, [src], [], [run])  # a node is admitted with its own inputs
    assert memory.asked[1] == (10, [src], [], [run])
    memory.room = 100
    d.dispatch()
    assert memory.asked[2] == (100, [src], [[src]], [run])  # b runs, reading src
    assert started == ["b", "a"] and not d.waiting
    assert [w.task for w in pool.workers] == [small, big]


def test_tasks_no_longer_wanted_are_dropped_unsent():
    run = new_run()
    running(run, "a")
    run.rec["a"].status = Status.FAILED
    pool = fake_pool(FakeWorker(0, 100))
    d, started = dispatcher(pool, sources=FakeSources(wanted=False))
    decode = Task(run, "src", Op.DECODE, read=object(), columns=["x"])
    d.add([Task(run, "a", Op.NODE), decode])
    d.dispatch()
    assert started == [] and not d.waiting and pool.workers[0].task is None


def test_a_node_is_sent_with_its_inputs_pinned_and_their_cost_recorded():
    run = new_run()
    run.payloads.update(a=FakePayload(80), b=FakePayload(20))
    running(run, "c")
    pool = fake_pool(FakeWorker(0, 100))
    d, _ = dispatcher(pool, held=500)
    task = Task(run, "c", Op.NODE)
    d.add([task])
    d.dispatch()
    assert task.pinned == [run.payloads["a"], run.payloads["b"]]
    assert d.running_inputs() == [task.pinned]
    assert set(run.edges) == {("a", "c"), ("b", "c")} and task.held_at_dispatch == 500


def test_a_decode_counts_no_attempt_on_its_sources_record():
    run = new_run()
    running(run, "src")
    pool = fake_pool(FakeWorker(0, 100))
    d, started = dispatcher(pool, sources=FakeSources(wanted=True))
    d.add([Task(run, "src", Op.DECODE, read=object(), columns=["x"])])
    d.dispatch()
    assert started == [] and run.rec["src"].attempts == 0 and run.rec["src"].worker_pid == 100


def test_a_worker_dead_while_idle_is_replaced_and_the_task_goes_to_the_new_one_first():
    run = new_run()
    running(run, "a", "b")
    pool = fake_pool(FakeWorker(0, 100, dead=True))
    d, started = dispatcher(pool)
    d.add([Task(run, "a", Op.NODE), Task(run, "b", Op.NODE)])
    d.dispatch()
    assert pool.replaced == 1 and pool.workers[0].task.name == "a"  # a kept its place
    assert run.rec["a"].attempts == 1 and run.rec["a"].worker_pid == 200
    assert started == ["a"]  # the try that found the worker dead is not reported
    assert d.waiting  # b waits for a worker
    d.clear()
    assert not d.waiting
