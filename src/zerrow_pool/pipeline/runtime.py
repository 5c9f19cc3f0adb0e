"""``Runtime``: the public face of the coordinator (coordinator.py holds the loop).

It validates its keyword arguments into a ``RuntimeOptions`` (options.py),
starts the workers, and runs pipelines: ``run``, ``run_many``, or prepared
runs (``new_state`` then ``run_states``, as the Ray agent does). ``cancel``
may come from any thread; ``close`` (or leaving the ``with`` block) stops the
workers and removes the runtime's files.
"""
from __future__ import annotations

from .coordinator import Coordinator
from .dag import Pipeline
from .options import RuntimeOptions, keyword, takes_options
from .report import RunReport, RunResult, raise_first_failure
from .run_state import RunState
from .worker_context import refuse_in_worker


@takes_options(
    (keyword("on_event"), "Called with a dict per event of a run (states.Event: a node "
                          "started, done, failed, retried, spilled...)."),
    (keyword("ray"), '"auto", "local" or a Ray address: run the same pipelines on a Ray '
                     "cluster instead (zerrow_pool.ray; docs/DISTRIBUTED.md)."))
class Runtime(Coordinator):
    """Warm workers + coordinator.  Use as a context manager::

        with Runtime(workers=2, transport="zerrow", memory_budget="4G") as rt:
            result = rt.run(pipeline)
            print(result.report.format())

    The options are listed below (options.py: each one's environment
    override); an unknown one raises TypeError.
    """

    def __init__(self, *args, on_event=None, ray=None, **options):
        options = RuntimeOptions.resolve(*args, **options)
        self.closed = False
        super().__init__(options, on_event)

    def __new__(cls, *args, ray=None, **kwargs):
        refuse_in_worker()  # a script that runs pipelines on import, imported by a worker
        # Runtime(ray=ADDRESS): the same API, with the DAG spread over a Ray cluster.
        if ray is not None:
            from ..ray import connect

            return connect(ray, *args, **kwargs)
        return super().__new__(cls)

    # The options read most often, under the names callers use.
    @property
    def n_workers(self) -> int:
        return self.options.workers

    @property
    def budget(self) -> int | None:
        return self.options.memory_budget

    @property
    def cache_enabled(self) -> bool:
        return self.options.cache

    def run(self, pipeline: Pipeline, *, outputs=None, raise_on_error: bool = True) -> RunResult:
        """Run one pipeline; returns its RunResult (sink tables by default)."""
        return self.run_many([pipeline], outputs=outputs, raise_on_error=raise_on_error)[0]

    def run_many(self, pipelines, *, outputs=None, raise_on_error: bool = True) -> list:
        """Run several pipelines concurrently; they share workers and the decode cache."""
        return self.run_states([self.new_state(p, outputs) for p in pipelines], raise_on_error)

    def new_state(self, pipeline: Pipeline, outputs=None, given=None) -> RunState:
        """A run of ``pipeline`` to pass to ``run_states``; ``given`` maps steps produced
        elsewhere to their payloads, which the run takes over."""
        rep = RunReport(pipeline.name, self.transport.name, self.n_workers, self.cache_enabled,
                        budget=self.budget)
        return RunState(pipeline, outputs, rep, given)

    def run_states(self, states, raise_on_error: bool = True) -> list:
        """Run prepared ``new_state`` runs concurrently; their RunResults in order."""
        if self.closed:
            raise RuntimeError("runtime is closed")
        results = self._run(states)
        if raise_on_error:
            raise_first_failure(results)
        return results

    def cancel(self) -> None:
        """Stop the run in progress (callable from any thread): ``run`` raises
        ``RunCancelled`` within a moment, its busy workers are killed and
        replaced, and the runtime stays usable."""
        self.cancellation.cancel()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.cancellation.close()
        self.machinery.close()  # frees what is held, stops the workers, removes the directories

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run(pipeline: Pipeline, **kwargs) -> RunResult:
    """One-shot helper: start a Runtime, run ``pipeline``, shut it down.

    Keyword arguments go to ``Runtime`` except ``outputs`` and
    ``raise_on_error``, which go to ``Runtime.run``.
    """
    run_kw = {k: kwargs.pop(k) for k in ("outputs", "raise_on_error") if k in kwargs}
    with Runtime(**kwargs) as rt:
        return rt.run(pipeline, **run_kw)


__all__ = ["Runtime", "run"]
