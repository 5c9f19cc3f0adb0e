"""The memory policy: what must stay in memory, what may be spilled and in
which order, and when a task may start under the budget.

``ResourceManager`` (budget.py) measures what is held and frees it (cached
decodes first, then the spill candidates it is given, in their order); this
policy chooses those candidates from what the coordinator hands in: the
inputs of the tasks running now and the runs in progress (run_state.py).

- *Pinned*: the inputs of running tasks, every run's kept outputs, and a
  new output being held (it already exists in memory).
- *Spillable*: every other intermediate still in memory, least recently
  produced first; a task waiting to start may spill its own inputs too, but
  only after everything else (its worker then memory-maps them from disk).
- *Admission*: a task starts once its estimate fits, or when nothing else is
  running (waiting could not free anything more).
"""
from __future__ import annotations

from . import run_state


class MemoryPolicy:
    """Chooses for ``resources`` (a ``ResourceManager``); ``on_spill(run, name,
    new)`` is told after a run's output was spilled and replaced by ``new``."""

    def __init__(self, resources, on_spill):
        self.resources = resources
        self.on_spill = on_spill

    def admit(self, need: int, own_inputs, running_inputs, runs) -> bool:
        """May a task needing ``need`` bytes start now, reading ``own_inputs``?
        Makes room for it first. ``running_inputs``: the inputs of each running task."""
        if self.resources.budget is None:
            return True
        own = {id(p) for p in own_inputs}
        order = sorted(self.spillable(runs), key=lambda candidate: id(candidate[0]) in own)
        fits = self.resources.make_room(need, self.pinned(running_inputs, runs), order,
                                        strict=False)
        return fits or not running_inputs

    def hold(self, payload, running_inputs, runs) -> None:
        """Make room for a new output ``payload`` (pinned: it exists already);
        raises ``BudgetExceeded`` when even spilling everything cold does not."""
        self.resources.make_room(0, self.pinned(running_inputs, runs) + [payload],
                                 self.spillable(runs), strict=True)

    def tidy(self, running_inputs, runs) -> None:
        """Get back under the budget if possible (after new cache entries)."""
        self.resources.make_room(0, self.pinned(running_inputs, runs), self.spillable(runs),
                                 strict=False)

    @staticmethod
    def pinned(running_inputs, runs) -> list:
        out = [p for inputs in running_inputs for p in inputs]
        for run in runs:
            out += [run.payloads[n] for n in run.keep if n in run.payloads]
        return out

    def spillable(self, runs) -> list:
        """``(payload, replace)`` for every intermediate in memory, least recently
        produced first; ``replace(new)`` swaps the spilled payload into its run."""
        out = []
        for run in runs:
            for name, p in run.payloads.items():
                if not p.spilled and not p.closed:
                    out.append((run.produced[name], p, self._replacer(run, name)))
        out.sort(key=lambda candidate: candidate[0])
        return [(p, replace) for _, p, replace in out]

    def _replacer(self, run, name):
        def replace(new):
            run_state.spilled(run, name, new)
            self.on_spill(run, name, new)
        return replace

