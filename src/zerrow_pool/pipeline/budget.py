"""Resource manager: one memory budget for everything the runtime holds.

Held memory is measured, not estimated: the union of the shared-memory
segments (memfds, or /dev/shm files for the copy transport) behind every live
intermediate and cache entry, each counted once however many payloads
reference it (resharing makes that common).

When something must fit, the manager frees in this order:

1. cached decodes nobody is reading, cheapest to re-decode per byte first;
2. cold intermediates (not pinned by a running or dispatching task), least
   recently used first, spilled to local disk;

and if that is still not enough it raises ``BudgetExceeded`` with the numbers,
rather than letting the kernel OOM-kill a worker.  Held memory may overshoot
the budget by at most ``tolerance`` (10%).
"""
from __future__ import annotations

import math
import re
import time


class BudgetExceeded(MemoryError):
    """The run cannot fit in its memory budget."""


# One size grammar for the whole project (csrc/env_bytes.h reads the ZERROW_*
# variables the same way): K, M, G, T are powers of 1024, with or without a
# trailing B or iB, in any case.  "4GB" is 4 GiB, never 4 * 10**9.
SIZE_GRAMMAR = ("a number of bytes with an optional K, M, G or T suffix; suffixes are binary "
                "whatever the spelling: 4G = 4GB = 4GiB = 4 * 1024**3 bytes")
_SHIFTS = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}
MIN_BUDGET = 1 << 20


def parse_size(text) -> int:
    """A size in bytes from ``text``.

    Parameters
    ----------
    text : str or int or float
        ``"512M"``, ``"1.5GiB"``, ``"4GB"``, ``"2e9"`` or a number of bytes.
        K, M, G and T are binary (powers of 1024) however they are spelled:
        ``4G``, ``4GB`` and ``4GiB`` are all 4 * 1024**3.

    Returns
    -------
    int
        The size in bytes.

    Raises
    ------
    ValueError
        ``text`` is not a non-negative size in this grammar.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"size {text!r} is negative")
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(text))
    if not m or (m.group(3) and m.group(3).lower() == "ib" and not m.group(2)):
        raise ValueError(f"cannot parse size {text!r}: give {SIZE_GRAMMAR}")
    return int(float(m.group(1)) * (1 << _SHIFTS[m.group(2).lower()]))


def parse_budget(text, minimum: int = 1) -> int:
    """A memory budget in bytes: :func:`parse_size`, refusing budgets below ``minimum``.

    The API accepts any budget of at least one byte (tests use tiny ones on
    purpose); ``zerrow run`` asks for at least ``MIN_BUDGET`` (1 MiB), since
    ``0`` or ``5`` there are typos for sizes, not budgets.

    Raises
    ------
    ValueError
        ``text`` does not parse, or is below ``minimum``.
    """
    n = parse_size(text)
    if n < minimum:
        raise ValueError(f"memory budget {text!r} is {fmt_bytes(n)}, below the minimum of "
                         f"{fmt_bytes(minimum)}; sizes are {SIZE_GRAMMAR}")
    return n


def fmt_bytes(n, *, up: bool = False) -> str:
    """``n`` bytes in binary units, one decimal; ``up``: rounded up, never down, so
    that a printed minimum read back with :func:`parse_size` is still enough."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            if unit == "B":
                return f"{math.ceil(n) if up else n:.0f} {unit}"
            # round(, 9) first: 7.4 MiB is 74.00000000000001 tenths in floating point
            return f"{math.ceil(round(n * 10, 9)) / 10 if up else n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class ResourceManager:
    def __init__(self, budget: int | None, cache, spiller, tolerance: float = 0.10):
        self.budget = budget
        self.tolerance = tolerance
        self.cache = cache
        self.spiller = spiller
        self.live: dict = {}  # id(payload) -> payload
        self.cached: set = set()  # ids in live that are decode-cache entries
        self.peak = 0
        self.peak_pinned = 0  # what runs pin: intermediates and the cached decodes they read
        self.peak_with_workers = 0  # held + a task's own pool peak (estimate)
        self.timeline: list = []  # (t, bytes held) samples for reports
        self.spill_error: str | None = None  # why the last spill failed, for explain()

    # ----------------------------------------------------------- accounting
    def track(self, payload, *, cached: bool = False) -> None:
        """Count ``payload``'s memory as held; ``cached``: a decode-cache entry, held
        for later runs as well as for the runs that read it."""
        self.live[id(payload)] = payload
        if cached:
            self.cached.add(id(payload))
        self._observe()

    def untrack(self, payload) -> None:
        self.live.pop(id(payload), None)
        self.cached.discard(id(payload))

    def usage(self, *, pinned_only: bool = False) -> int:
        """Bytes held, each segment counted once. ``pinned_only``: leave out cached
        decodes that no live intermediate reads (kept only for later runs, and the
        first thing a budget evicts); a source's payload counts the entries it reads."""
        total, pinned = self._usages()
        return pinned if pinned_only else total

    def _usages(self) -> tuple[int, int]:
        """(everything held, what is pinned), from one fstat pass over the payloads."""
        held: dict = {}
        pinned: dict = {}
        for key, p in list(self.live.items()):
            if p.closed:
                self.untrack(p)
                continue
            memory = p.memory()
            held.update(memory)
            if key not in self.cached:
                pinned.update(memory)
        return sum(held.values()), sum(pinned.values())

    def reset_peaks(self) -> None:
        self.peak, self.peak_pinned = self._usages()
        self.peak_with_workers = self.peak

    def _observe(self) -> int:
        u, pinned = self._usages()
        self.peak = max(self.peak, u)
        self.peak_pinned = max(self.peak_pinned, pinned)
        self.timeline.append((time.monotonic(), u))
        return u

    def note_worker_peak(self, held_at_dispatch: int, task_peak: int) -> None:
        """What was held when a task started plus what the task allocated at most.

        The budget governs what the runtime holds; this estimate shows how far
        a worker's temporaries went beyond it (they are not enforced)."""
        self.peak_with_workers = max(self.peak_with_workers, held_at_dispatch + task_peak)

    @property
    def limit(self) -> int | None:
        return None if self.budget is None else int(self.budget * (1 + self.tolerance))

    # ----------------------------------------------------------- freeing
    def make_room(self, need: int, pinned, spillable, *, strict: bool) -> bool:
        """Free memory until ``usage + need <= budget``.

        ``pinned``: payloads that must stay in memory.  ``spillable``: list of
        ``(payload, replace)`` candidates, coldest first, where ``replace(new)``
        swaps in the spilled payload.  Returns True if it fits; with
        ``strict`` raises BudgetExceeded when even the tolerance is exceeded.
        """
        if self.budget is None:
            return True
        used = self.usage()
        if used + need <= self.budget:
            return True
        self.spill_error = None
        pinned_ids = {id(p) for p in pinned}
        for entry in self.cache.eviction_order() if self.cache else ():
            if used + need <= self.budget:
                break
            if entry.refs > 0 or entry.payload.spilled:
                continue  # evicting it would free no memory now (read, or on disk)
            self.cache.evict(entry)
            used = self.usage()
        for payload, replace in spillable:
            if used + need <= self.budget:
                break
            if id(payload) in pinned_ids or payload.spilled or payload.closed:
                continue
            try:
                new = self.spiller.spill(payload)
            except OSError as e:  # the payload stays, in memory; the disk takes no more
                self.spill_error = (f"spilling to {self.spiller.base} failed ({e}): point "
                                    "ZERROW_SPILL_DIR (spill_dir=) at a local disk with room")
                break
            self.untrack(payload)
            replace(new)
            used = self.usage()
        self._observe()
        if used + need <= self.budget:
            return True
        if strict and used + need > self.limit:
            raise BudgetExceeded(self.explain(used, need))
        return False

    def explain(self, used: int, need: int) -> str:
        spill = f" {self.spill_error}." if self.spill_error else ""
        return (f"memory budget {fmt_bytes(self.budget)} (+{self.tolerance:.0%} tolerance) cannot "
                f"hold this run: {fmt_bytes(used)} is pinned by running nodes and their inputs and "
                f"{fmt_bytes(need)} more is needed, after evicting the decode cache and spilling "
                f"every cold intermediate. Raise --memory-budget to at least "
                f"{fmt_bytes(used + need, up=True)} to get past this node (nodes "
                "after it may need more: a run without a budget reports what the whole run "
                "pinned, as 'pinned by runs'), or use fewer workers so fewer intermediates are "
                "pinned at once." + spill)
