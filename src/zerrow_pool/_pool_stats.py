"""The pool's counters as a typed object (attributes) that is still the dict it used to be."""
from __future__ import annotations

COUNTERS = (
    "bytes_allocated", "max_memory", "total_bytes_allocated", "num_allocations",
    "realloc_in_place", "realloc_copied", "segments", "frozen_segments", "spare_segments",
    "lent_segments", "segments_reclaimed", "bytes_resident", "bytes_retained", "scopes_open",
    "cow_bytes_copied",
)


class PoolStats(dict):
    """A snapshot of the zerrow pool's counters; see :func:`zerrow_pool.stats`.

    Read them as attributes (``s.bytes_allocated``) or, as before, as a dict
    (``s["bytes_allocated"]``, ``json.dumps(s)``).

    Parameters
    ----------
    **counters : int
        Every name of ``COUNTERS``, no other.

    Raises
    ------
    TypeError
        A counter is missing or unknown.

    See Also
    --------
    zerrow_pool.stats : what each counter means.
    """

    __slots__ = ()

    def __init__(self, **counters: int):
        unknown = counters.keys() - set(COUNTERS)
        missing = set(COUNTERS) - counters.keys()
        if unknown or missing:
            raise TypeError(f"PoolStats: unknown {sorted(unknown)}, missing {sorted(missing)}")
        super().__init__(counters)

    def __repr__(self) -> str:
        return "PoolStats(" + ", ".join(f"{k}={v}" for k, v in self.items()) + ")"


for _name in COUNTERS:
    setattr(PoolStats, _name, property(lambda self, _name=_name: self[_name]))
del _name
