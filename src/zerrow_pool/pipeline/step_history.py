"""What each step did the last time it ran, kept across runs (by pipeline and
step name) to plan its next run:

- the bytes its output added to held memory: the estimate its task is
  admitted with (memory_policy.py); the first time, its inputs' bytes times
  the transport's factor;
- the most it allocated: its pool scope's hint (``NodeRequest.expected_bytes``);
- the worker slot it ran in: the next run prefers that worker, whose warm
  memory is the one sized for the step.

Plain data, tested without processes (tests/test_run_state.py).
"""
from __future__ import annotations

from . import run_state


class StepHistory:
    """Each step's last run; ``estimate_factor``: the transport's, for first guesses."""

    def __init__(self, estimate_factor: float):
        self.estimate_factor = estimate_factor
        self._added: dict = {}
        self._peak: dict = {}
        self._slot: dict = {}

    def estimate(self, run, name: str) -> int:
        """What the task of step ``name`` of ``run`` is expected to add to held memory."""
        added = self._added.get(_key(run, name))
        if added is None:
            return int(self.estimate_factor * run_state.input_bytes(run, name))
        return added

    def expected_peak(self, run, name: str) -> int:
        """The most the step allocated in its last run; 0 when unknown."""
        return self._peak.get(_key(run, name), 0)

    def last_slot(self, run, name: str) -> int | None:
        """The id of the worker slot the step was last sent to."""
        return self._slot.get(_key(run, name))

    def sent(self, run, name: str, slot: int) -> None:
        self._slot[_key(run, name)] = slot

    def completed(self, run, name: str, added: int, peak: int) -> None:
        """The step completed, adding ``added`` bytes to held memory; ``peak``:
        the most it allocated (0: not measured, the last known one stays)."""
        key = _key(run, name)
        self._added[key] = max(0, added)
        if peak:
            self._peak[key] = peak


def _key(run, name: str) -> tuple:
    return (run.pipeline.name, name)
