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
from .options import RuntimeOptions
from .report import RunReport, RunResult, raise_first_failure
from .run_state import RunState


class Runtime(Coordinator):
    """Warm workers + coordinator.  Use as a context manager::

        with Runtime(workers=2, transport="zerrow", memory_budget="4G") as rt:
            result = rt.run(pipeline)
            print(result.report.format())

    The keyword arguments are ``RuntimeOptions``' (options.py: what each
    means, its default and its environment override).
    ``Runtime(ray="auto" | "local" | ADDRESS, ...)`` runs the same pipelines on a
    Ray cluster instead (zerrow_pool.ray; docs/DISTRIBUTED.md).
    """

    def __init__(self, workers: int | None = None, transport: str = "zerrow", *,
                 memory_budget=None, cache: bool = True, spill_dir: str | None = None,
                 preload: bool = True, on_event=None, tolerance: float = 0.10,
                 strict_budget: bool = False, cache_bytes=None, isolation: str = "process",
                 node_memory_limit=None, ray=None):
        options = RuntimeOptions.resolve(
            workers, transport, memory_budget=memory_budget, cache=cache, spill_dir=spill_dir,
            preload=preload, tolerance=tolerance, strict_budget=strict_budget,
            cache_bytes=cache_bytes, isolation=isolation, node_memory_limit=node_memory_limit)
        self.closed = False
        super().__init__(options, on_event)

    def __new__(cls, *args, ray=None, **kwargs):
        # Runtime(ray=ADDRESS): the same API, with the DAG spread over a Ray cluster.
        if ray is not None:
            from ..ray import connect

            return connect(ray, *args, **kwargs)
        return super().__new__(cls)

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
        self._cancelled.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._wake_r.close()
        self._wake_w.close()
        if self.cache:
            self.cache.clear()
        for p in list(self.resources.live.values()):
            p.close()
        self._finalizer()  # stops the workers, removes the directories

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
