"""Every tunable of a local Runtime, validated in one place (after Ray's ``DAGContext``).

``RuntimeOptions.resolve(...)`` takes ``Runtime``'s keyword arguments, reads
the environment where an argument is left out, and returns a frozen
``RuntimeOptions`` whose fields hold final values (bytes as ints, the
isolation as an ``Isolation``), or raises ``ValueError`` naming the bad value.
It starts no process and touches no file, so every rule is unit-tested
(tests/test_runtime_options.py).

Environment overrides, read when the runtime is made:

  ZERROW_CACHE_BYTES       cache_bytes, when the argument is None
  ZERROW_SPILL_DIR         spill_dir, when the argument is None
  ZERROW_COPY_DIR          copy_dir (no argument)
  ZERROW_DEBUG_INVARIANTS  check_invariants (no argument)

``ZERROW_WARM_SANDBOXES`` is read by each worker's zygote (zygote.py), not here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from . import rundirs
from .budget import parse_budget, parse_size
from .sandbox import Isolation, parse_isolation
from .transports import transport_class


@dataclass(frozen=True)
class RuntimeOptions:
    # Worker processes: at least 1; None asks for one per CPU.
    workers: int
    # "zerrow" (share/attach) or "copy" (Arrow IPC files, the baseline).
    transport: str = "zerrow"
    # zerrow transport: LD_PRELOAD zerrow's allocator into the workers.
    preload: bool = True
    # Bytes the runtime's intermediates may hold (parse_size grammar); None: no budget.
    memory_budget: int | None = None
    # How far over the budget held memory may go before a node fails (0.10: 10%).
    tolerance: float = 0.10
    # Stop a worker whose task allocates more than its share of the budget's
    # headroom, failing its node (BudgetExceeded); only with a budget (False
    # without one). Allocations are sampled every few ms: a shorter spike can
    # slip through.
    strict_budget: bool = False
    # The decode cache, only where the transport can use it (False otherwise).
    cache: bool = True
    # What idle cache entries may keep between runs, in bytes (None when the
    # cache is off). Argument, else $ZERROW_CACHE_BYTES, else a quarter of
    # the machine's memory.
    cache_bytes: int | None = None
    # Where spilled intermediates go. Argument, else $ZERROW_SPILL_DIR, else
    # the temp directory (disk: never /dev/shm).
    spill_dir: str = ""
    # Where the copy transport writes. $ZERROW_COPY_DIR, else /dev/shm, else
    # the temp directory.
    copy_dir: str = ""
    # How nodes are kept apart: "process" (a sandbox per pipeline) or "none".
    isolation: Isolation = Isolation.PROCESS
    # Default memory limit of every node in bytes (a node's own memory_limit
    # wins); None: no limit.
    node_memory_limit: int | None = None
    # Check every run's invariants at each turn of the loop (run_state.check):
    # $ZERROW_DEBUG_INVARIANTS set to anything but "" or "0".
    check_invariants: bool = False

    @classmethod
    def resolve(cls, workers: int | None = None, transport: str = "zerrow", *,
                memory_budget=None, cache: bool = True, spill_dir: str | None = None,
                preload: bool = True, tolerance: float = 0.10, strict_budget: bool = False,
                cache_bytes=None, isolation: str = "process",
                node_memory_limit=None) -> "RuntimeOptions":
        """The options for ``Runtime``'s keyword arguments, the environment
        filling in what they leave out; raises ValueError on a bad value."""
        isolation = parse_isolation(isolation)
        node_memory_limit = None if node_memory_limit is None else parse_size(node_memory_limit)
        uses_cache = transport_class(transport).uses_cache
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        budget = parse_budget(memory_budget) if memory_budget is not None else None
        cache = bool(cache) and uses_cache
        if not cache:
            cache_bytes = None
        else:
            if cache_bytes is None:
                cache_bytes = os.environ.get("ZERROW_CACHE_BYTES")
            cache_bytes = (parse_size(cache_bytes) if cache_bytes is not None
                           else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4)
        return cls(
            workers=workers or max(1, os.cpu_count() or 1), transport=transport,
            preload=bool(preload), memory_budget=budget, tolerance=tolerance,
            strict_budget=bool(strict_budget) and budget is not None, cache=cache,
            cache_bytes=cache_bytes, spill_dir=spill_dir or rundirs.spill_base(),
            copy_dir=rundirs.copy_base(), isolation=isolation,
            node_memory_limit=node_memory_limit,
            check_invariants=os.environ.get("ZERROW_DEBUG_INVARIANTS", "0") not in ("", "0"))
