"""The per-run rules (run_state.py), the memory policy (memory_policy.py) and
each step's history (step_history.py) over plain data: fake payloads, no
worker, no process, no shared memory."""
import pytest

from zerrow_pool.pipeline import run_state
from zerrow_pool.pipeline.budget import BudgetExceeded, ResourceManager
from zerrow_pool.pipeline.dag import Pipeline, node, parquet
from zerrow_pool.pipeline.memory_policy import MemoryPolicy
from zerrow_pool.pipeline.report import RunReport
from zerrow_pool.pipeline.run_state import RunState
from zerrow_pool.pipeline.specs import OutputCounters
from zerrow_pool.pipeline.states import Status
from zerrow_pool.pipeline.step_history import StepHistory


class FakePayload:
    """A payload holding ``nbytes`` of one segment of its own."""

    def __init__(self, nbytes=100, *, spilled=False, label=""):
        self.rows, self.nbytes, self.counters = 1, nbytes, OutputCounters()
        self.spilled, self.closed, self.label = spilled, False, label

    def memory(self):
        return {} if self.closed or self.spilled else {("segment", id(self)): self.nbytes}

    @property
    def disk_bytes(self):
        return self.nbytes if self.spilled else 0

    def close(self):
        self.closed = True


class FakeSpiller:
    def __init__(self):
        self.spilled = []

    def spill(self, payload):
        self.spilled.append(payload.label)
        payload.close()
        return FakePayload(payload.nbytes, spilled=True, label=payload.label)


@node
def a(src):
    return src


@node
def b(src):
    return src


@node
def c(a, b):
    return a


@node
def d(c):
    return c


@node
def e(a):
    return a


def diamond(name="diamond"):
    """src -> a, b; (a, b) -> c -> d; a -> e. Sinks: d and e."""
    return Pipeline(name, [parquet("src", "/nonexistent.parquet"), a, b, c, d, e])


def new_run(pipeline=None, outputs=None, given=None):
    pipeline = pipeline or diamond()
    return RunState(pipeline, outputs, RunReport(pipeline.name, "copy", 1, False), given)


def finish(run, name, payload=None, now=0.0):
    """Start and complete ``name`` (starting what it makes ready, as the loop
    does); its effects."""
    run_state.start(run, name, now)
    fx = run_state.complete(run, name, payload or FakePayload(label=name), now, {}, 0)
    apply(run, fx)
    return fx


def apply(run, fx):
    for step in fx.start:
        run_state.start(run, step, 0.0)
    run_state.check(run)


def test_roots_then_consumers_become_ready_in_order_once_all_inputs_are_done():
    run = new_run()
    assert run_state.roots(run) == ["src"]
    assert finish(run, "src").start == ["a", "b"]
    assert finish(run, "a").start == ["e"]  # c still waits for b
    assert run.status("c") == Status.PENDING
    assert finish(run, "b").start == ["c"]


def test_an_input_is_released_once_every_consumer_finished():
    run = new_run()
    src = FakePayload(label="src")
    assert finish(run, "src", src).release == []
    assert finish(run, "a").release == []  # b still reads src
    assert finish(run, "b").release == [src]
    assert "src" not in run.payloads and "src" not in run.produced
    a_out, b_out = run.payloads["a"], run.payloads["b"]
    assert finish(run, "e").release == []  # c still reads a; e is a kept sink
    assert finish(run, "c").release == [a_out, b_out]
    assert run.payloads.keys() == {"c", "e"}


def test_kept_outputs_stay_and_unkept_sinks_go_at_once():
    run = new_run(outputs=["a", "d"])
    for name in ("src", "a", "b", "c"):
        finish(run, name)
    e_out = FakePayload(label="e")
    assert finish(run, "e", e_out).release == [e_out]  # a sink nobody keeps
    assert "a" in run.payloads  # every consumer finished, but it is kept
    c_out, d_out = run.payloads["c"], FakePayload(label="d")
    assert finish(run, "d", d_out).release == [c_out]  # d itself is kept
    assert run.payloads.keys() == {"a", "d"}


def test_take_outputs_hands_over_each_kept_output_once():
    run = new_run(outputs=["a", "d"])
    outs = {}
    for name in ("src", "a", "b", "c", "e", "d"):
        outs[name] = FakePayload(label=name)
        finish(run, name, outs[name])
    taken = run_state.take_outputs(run)
    assert taken == {"a": outs["a"], "d": outs["d"]}
    assert run_state.take_outputs(run) == {} and run.payloads == {}


def test_unknown_outputs_are_refused():
    with pytest.raises(KeyError, match="nope"):
        new_run(outputs=["nope"])


def test_a_failure_skips_everything_downstream_and_nothing_else():
    run = new_run()
    src = FakePayload(label="src")
    finish(run, "src", src)
    run_state.start(run, "a", 0.0)
    run_state.start(run, "b", 0.0)
    fx = run_state.fail(run, "a", "Traceback...\nValueError: bad row", 1.0)
    apply(run, fx)
    assert sorted(fx.skipped) == ["c", "d", "e"]
    assert run.status("a") == Status.FAILED and run.status("b") == Status.RUNNING
    assert run.report.error == "node 'a' of pipeline 'diamond' failed: ValueError: bad row"
    assert fx.release == []  # b still reads src
    assert not run_state.settle(run, 2.0)  # b is running
    # b was src's last reader; b's only consumer was skipped: its output goes as it arrives
    b_out = FakePayload(label="b")
    fx = finish(run, "b", b_out)
    assert fx.start == [] and fx.release == [src, b_out] and run.payloads == {}
    assert run_state.settle(run, 2.0) and run.report.status == Status.FAILED


def test_the_first_failure_is_the_runs_error():
    run = new_run()
    finish(run, "src")
    run_state.fail(run, "a", "first", 1.0)
    apply(run, run_state.fail(run, "b", "second", 1.0))
    assert "'a'" in run.report.error and "first" in run.report.error


def test_a_failed_source_releases_nothing_it_never_had_and_skips_all():
    run = new_run()
    run_state.start(run, "src", 0.0)
    fx = run_state.fail(run, "src", "FileNotFoundError: gone", 1.0)
    apply(run, fx)
    assert sorted(fx.skipped) == ["a", "b", "c", "d", "e"] and fx.release == []
    assert run_state.settle(run, 3.0)
    assert run.report.status == Status.FAILED and run.report.wall_s == pytest.approx(3.0 - run.t0)


def test_settle_waits_for_every_step_and_happens_once():
    run = new_run()
    for name in ("src", "a", "b", "c", "e"):
        finish(run, name)
        assert not run_state.settle(run, 1.0) and not run.done
    finish(run, "d")
    assert run_state.settle(run, 1.0) and run.done and run.report.status == Status.DONE
    assert not run_state.settle(run, 2.0)


def test_forced_settle_skips_what_nothing_can_run():
    run = new_run()
    finish(run, "src")
    assert run_state.settle(run, 1.0, force=True)
    assert [run.status(n) for n in "abcde"] == [Status.SKIPPED] * 5
    assert run.report.status == Status.DONE


def test_forced_settle_releases_what_only_skipped_steps_read():
    run = new_run(outputs=["a", "d"])
    src, a_out = FakePayload(label="src"), FakePayload(label="a")
    finish(run, "src", src)
    finish(run, "a", a_out)  # b and e running; c waits for b
    fx = run_state.settle(run, 1.0, force=True)
    assert run.payloads == {"a": a_out} and run.produced.keys() == {"a"}  # a is kept
    assert fx.release == [src] and fx.skipped == ["b", "c", "d", "e"]
    assert not any(p.closed for p in (src, a_out))  # closing is the loop's job
    run_state.check(run)


def test_a_given_step_is_taken_over_when_it_starts():
    given = FakePayload(label="a")
    run = new_run(given={"a": given})
    assert run_state.start(run, "src", 0.0) is None
    assert run_state.start(run, "a", 0.0) is given and run.given == {}
    assert run.status("a") == Status.RUNNING


def test_abort_settles_the_run_as_failed_and_releases_everything_held_or_given():
    given = FakePayload(label="c")
    run = new_run(outputs=["a", "d"], given={"c": given})
    src, a_out = FakePayload(label="src"), FakePayload(label="a")
    finish(run, "src", src)
    finish(run, "a", a_out)  # kept; b and e running
    fx = run_state.abort(run, "RunCancelled: the run was cancelled", 5.0)
    assert set(map(id, fx.release)) == {id(given), id(src), id(a_out)}
    assert len(fx.release) == 3 and not any(p.closed for p in fx.release)  # closing is the loop's
    assert fx.skipped == ["b", "c", "d", "e"] and fx.start == []
    assert run.payloads == {} and run.produced == {} and run.given == {}
    assert run.done and run.report.status == Status.FAILED
    assert run.report.error == "the run was aborted: RunCancelled: the run was cancelled"
    assert run.report.wall_s == pytest.approx(5.0 - run.t0)
    run_state.check(run)
    assert run_state.abort(run, "again", 6.0) == run_state.Effects()  # nothing left


def test_abort_keeps_a_settled_runs_report_and_releases_its_kept_outputs():
    run = new_run()
    for name in ("src", "a", "b", "c", "d", "e"):
        finish(run, name)
    kept = set(map(id, run.payloads.values()))
    assert run_state.settle(run, 1.0) and run.report.status == Status.DONE
    fx = run_state.abort(run, "KeyboardInterrupt: ", 2.0)
    assert set(map(id, fx.release)) == kept and fx.skipped == []
    assert run.report.status == Status.DONE and run.report.error is None
    assert run.report.wall_s == pytest.approx(1.0 - run.t0)


def test_abort_keeps_the_first_failure_as_the_runs_error():
    run = new_run()
    finish(run, "src")
    apply(run, run_state.fail(run, "a", "ValueError: bad row", 1.0))
    run_state.abort(run, "RunCancelled: the run was cancelled", 2.0)
    assert run.report.error == "node 'a' of pipeline 'diamond' failed: ValueError: bad row"
    assert run.report.status == Status.FAILED and run.status("b") == Status.SKIPPED


def test_check_names_a_broken_invariant():
    run = new_run()
    finish(run, "src")
    run.remaining["src"] += 1
    with pytest.raises(AssertionError, match="src: remaining 3"):
        run_state.check(run)
    with pytest.raises(AssertionError, match="src: pending with every input done"):
        run_state.check(new_run())  # its roots not started yet


def test_edges_record_what_each_input_cost():
    run = new_run()
    shared = FakePayload(80)
    shared.counters = OutputCounters(bytes_zero_copy=80)
    spilled = FakePayload(50, spilled=True)  # a share on disk: mapped where it lies
    spilled.counters = OutputCounters(bytes_zero_copy=50)
    run.payloads.update(a=shared, b=spilled)
    upstream = run_state.inputs(run, "c")
    assert upstream == [shared, spilled]
    run_state.record_edges(run, "c", upstream)
    ea, eb = run.edges[("a", "c")], run.edges[("b", "c")]
    assert (ea.bytes, ea.bytes_zero_copy, ea.bytes_copied) == (80, 80, 0)
    # The spill's copy is the report's spilled_bytes, once, not a copy on each edge.
    assert (eb.bytes, eb.bytes_zero_copy, eb.bytes_copied) == (50, 50, 0)
    copied = FakePayload(30, spilled=True)  # an IPC file of the copy transport, spilled
    copied.counters = OutputCounters(bytes_copied=30)
    run.payloads["b"] = copied
    run_state.record_edges(run, "c", run_state.inputs(run, "c"))
    eb = run.edges[("b", "c")]
    assert (eb.bytes, eb.bytes_zero_copy, eb.bytes_copied) == (30, 0, 30)


# ------------------------------------------------------------- memory policy
def held_run(resources, produced, name="diamond"):
    """A run holding a and b (c's inputs), completed in ``produced``'s order at its times."""
    run = new_run(diamond(name))
    finish(run, "src", now=0.0)
    for step in produced:
        payload = FakePayload(100, label=f"{name}.{step}")
        resources.track(payload)
        finish(run, step, payload, now=produced[step])
    return run


def policy(budget):
    spiller = FakeSpiller()
    resources = ResourceManager(budget, None, spiller, tolerance=0.0)
    spills = []
    return MemoryPolicy(resources, lambda run, name, new: spills.append(name)), spiller, spills


def test_spilling_takes_the_least_recently_produced_first():
    memory, spiller, spills = policy(budget=250)
    run = held_run(memory.resources, {"a": 2.0, "b": 1.0})  # a is held first, b is older
    assert memory.admit(100, [], [[]], [run])  # 200 held + 100 > 250: one spill
    assert spiller.spilled == ["diamond.b"] and spills == ["b"]
    assert run.payloads["b"].spilled and not run.payloads["a"].spilled
    assert run.rec["b"].spilled and run.report.spills == 1 and run.report.spilled_bytes == 100


def test_inputs_of_running_tasks_and_kept_outputs_are_never_spilled():
    memory, spiller, _ = policy(budget=150)
    run = held_run(memory.resources, {"b": 1.0, "a": 2.0})
    kept = new_run(diamond("kept"), outputs=["src"])
    out = FakePayload(100, label="kept.src")
    memory.resources.track(out)
    finish(kept, "src", out, now=0.5)
    # b is the oldest but a running task reads it; kept.src is older still but kept
    assert not memory.admit(100, [], [[run.payloads["b"]]], [kept, run])
    assert spiller.spilled == ["diamond.a"]


def test_a_task_spills_its_own_inputs_last():
    memory, spiller, _ = policy(budget=250)
    mine = held_run(memory.resources, {"a": 1.0, "b": 2.0}, "mine")
    other = held_run(memory.resources, {"a": 3.0, "b": 4.0}, "other")
    own = run_state.inputs(mine, "c")
    assert memory.admit(100, own, [[]], [mine, other])
    assert spiller.spilled == ["other.a", "other.b", "mine.a"]


def test_admission_waits_while_others_run_and_not_when_alone():
    memory, spiller, _ = policy(budget=250)
    run = held_run(memory.resources, {"b": 1.0, "a": 2.0})
    pins = [run.payloads["a"], run.payloads["b"]]
    assert not memory.admit(100, [], [pins], [run])  # nothing spillable: wait
    assert spiller.spilled == []
    # nothing running: waiting would free nothing, so it starts even though it cannot fit
    assert memory.admit(1000, [], [], [run])
    assert spiller.spilled == ["diamond.b", "diamond.a"]


def test_no_budget_admits_everything_and_spills_nothing():
    memory, spiller, _ = policy(budget=None)
    run = held_run(memory.resources, {"b": 1.0, "a": 2.0})
    assert memory.admit(10**12, [], [[]], [run]) and spiller.spilled == []


def test_holding_a_new_output_spills_cold_ones_or_raises():
    memory, spiller, _ = policy(budget=250)
    run = held_run(memory.resources, {"b": 1.0, "a": 2.0})
    new = FakePayload(100, label="new")
    memory.resources.track(new)
    memory.hold(new, [[]], [run])
    assert spiller.spilled == ["diamond.b"] and not new.spilled
    too_big = FakePayload(300, label="too big")
    memory.resources.track(too_big)
    with pytest.raises(BudgetExceeded, match="cannot hold this run"):
        memory.hold(too_big, [[run.payloads["a"]]], [run])
    assert spiller.spilled == ["diamond.b"]  # a was pinned, the new output too


def test_history_guesses_from_the_inputs_then_keeps_each_steps_last_run():
    history = StepHistory(1.5)
    run = new_run()
    finish(run, "src", FakePayload(100))
    assert history.estimate(run, "a") == 150  # first time: its inputs' bytes times the factor
    assert history.expected_peak(run, "a") == 0 and history.last_slot(run, "a") is None
    history.sent(run, "a", 3)
    history.completed(run, "a", 40, peak=500)
    assert (history.estimate(run, "a"), history.expected_peak(run, "a")) == (40, 500)
    assert history.last_slot(run, "a") == 3 and history.estimate(run, "b") == 150
    history.completed(run, "a", -10, peak=0)  # held memory fell; no peak measured
    assert (history.estimate(run, "a"), history.expected_peak(run, "a")) == (0, 500)
    other = new_run(diamond("other"))
    finish(other, "src", FakePayload(100))
    assert history.estimate(other, "a") == 150  # another pipeline's step of the same name
    assert history.last_slot(other, "a") is None
