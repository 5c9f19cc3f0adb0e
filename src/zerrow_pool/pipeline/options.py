"""Every tunable of a local Runtime, named once and validated in one place
(after Ray's ``DAGContext``).

``OPTIONS`` is the one list of the runtime's options: each one's name, its
default and what it means. ``Runtime`` and ``RayRuntime`` take them as
keyword arguments (``workers`` and ``transport`` also positionally) and hand
them to ``RuntimeOptions.arguments``, which fills in the defaults and raises
``TypeError`` naming an unknown option and the valid ones; their docstrings
and signatures are made from ``OPTIONS`` (``takes_options``).

``RuntimeOptions.resolve(...)`` takes the same arguments, reads the
environment where an argument is left out, and returns a frozen
``RuntimeOptions`` whose fields hold final values (bytes as ints, the
isolation as an ``Isolation``), or raises ``ValueError`` naming the bad value.
It starts no process and touches no file, so every rule is unit-tested
(tests/test_runtime_options.py). A Ray driver only checks the names: each
machine's agent resolves them against its own environment and memory.

Environment overrides, read when the runtime is made:

  ZERROW_CACHE_BYTES       cache_bytes, when the argument is None
  ZERROW_SPILL_DIR         spill_dir, when the argument is None
  ZERROW_COPY_DIR          copy_dir (no argument)
  ZERROW_DEBUG_INVARIANTS  check_invariants (no argument)

``ZERROW_WARM_SANDBOXES`` is read by each worker's zygote (zygote.py), not here.
"""
from __future__ import annotations

import inspect
import os
import textwrap
from dataclasses import dataclass

from . import rundirs
from .budget import parse_budget, parse_size
from .sandbox import Isolation, parse_isolation
from .transports import transport_class


@dataclass(frozen=True)
class Option:
    """One keyword argument of ``Runtime``: its ``name``, ``default`` and what it means."""

    name: str
    default: object
    help: str


OPTIONS = (
    Option("workers", None, "Worker processes: at least 1; None asks for one per CPU."),
    Option("transport", "zerrow",
           '"zerrow" (share/attach) or "copy" (Arrow IPC files, the baseline).'),
    Option("memory_budget", None,
           "Bytes the runtime's intermediates may hold (an int, or a size such as "
           '"4G"); None: no budget.'),
    Option("cache", True, "The decode cache, only where the transport can use it."),
    Option("spill_dir", None,
           "Where spilled intermediates go; None: $ZERROW_SPILL_DIR, else the temp "
           "directory (disk: never /dev/shm)."),
    Option("preload", True, "zerrow transport: LD_PRELOAD zerrow's allocator into the workers."),
    Option("tolerance", 0.10,
           "How far over the budget held memory may go before a node fails (0.10: 10%)."),
    Option("strict_budget", False,
           "Stop a worker whose task allocates more than its share of the budget's "
           "headroom, failing its node (BudgetExceeded); only with a budget. Allocations "
           "are sampled every few ms: a shorter spike can slip through."),
    Option("cache_bytes", None,
           "What idle cache entries may keep between runs, in bytes or a size; None: "
           "$ZERROW_CACHE_BYTES, else a quarter of the machine's memory."),
    Option("isolation", "process",
           'How nodes are kept apart: "process" (a sandbox per pipeline) or "none".'),
    Option("node_memory_limit", None,
           "Default memory limit of every node, in bytes or a size (a node's own "
           "memory_limit wins); None: no limit."),
)
POSITIONAL = ("workers", "transport")  # may come first, in this order, without their names


def takes_options(*extra, leading=()):
    """Class decorator for a runtime taking ``OPTIONS``: appends them to its
    docstring and gives it their signature (what ``help`` and ``inspect``
    show). ``leading``: parameters before the options; ``extra``: keyword
    parameters after them, as ``(inspect.Parameter, what it means)``."""

    def decorate(cls):
        params, helps = list(leading), []
        for o in OPTIONS:
            kind = (inspect.Parameter.POSITIONAL_OR_KEYWORD if o.name in POSITIONAL
                    else inspect.Parameter.KEYWORD_ONLY)
            params.append(inspect.Parameter(o.name, kind, default=o.default))
            helps.append(o.help)
        for param, help in extra:
            params.append(param)
            helps.append(help)
        lines = ["", "    Options", "    -------"]
        for param, help in zip(params[len(leading):], helps):
            lines.append(f"    {param.name} : default {param.default!r}")
            lines += textwrap.wrap(help, 76, initial_indent=" " * 8, subsequent_indent=" " * 8)
        cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n" + "\n".join(lines) + "\n"
        cls.__signature__ = inspect.Signature(params)
        return cls

    return decorate


def keyword(name: str, default=None) -> inspect.Parameter:
    """A keyword-only parameter, for ``takes_options``."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)


@dataclass(frozen=True)
class RuntimeOptions:
    """The options' final values (see ``OPTIONS`` for what each means), and
    two the environment alone sets: ``copy_dir`` (where the copy transport
    writes: $ZERROW_COPY_DIR, else /dev/shm, else the temp directory) and
    ``check_invariants`` (check every run's invariants at each turn of the
    loop, run_state.check: $ZERROW_DEBUG_INVARIANTS set to anything but ""
    or "0")."""

    workers: int
    transport: str
    preload: bool
    memory_budget: int | None
    tolerance: float
    strict_budget: bool  # False without a budget
    cache: bool  # False where the transport cannot use it
    cache_bytes: int | None  # None when the cache is off
    spill_dir: str
    copy_dir: str
    isolation: Isolation
    node_memory_limit: int | None
    check_invariants: bool

    @staticmethod
    def arguments(*args, **kwargs) -> dict:
        """Every option by name: those given (``POSITIONAL`` ones may come
        first without their names) and the defaults of the rest. Raises
        TypeError on an unknown option (naming the valid ones), too many
        positional arguments, or an option given twice."""
        if len(args) > len(POSITIONAL):
            raise TypeError(f"at most {len(POSITIONAL)} options may be given without their "
                            f"names ({', '.join(POSITIONAL)}), not {len(args)}")
        for name, value in zip(POSITIONAL, args):
            if name in kwargs:
                raise TypeError(f"option {name!r} given twice")
            kwargs[name] = value
        valid = {o.name: o.default for o in OPTIONS}
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise TypeError(f"unknown runtime option{'s' if len(unknown) > 1 else ''} "
                            f"{', '.join(map(repr, unknown))}; the options are: "
                            f"{', '.join(valid)}")
        return {**valid, **kwargs}

    @classmethod
    def resolve(cls, *args, **kwargs) -> "RuntimeOptions":
        """The options for ``Runtime``'s arguments (as ``arguments`` takes
        them), the environment filling in what they leave out; raises
        TypeError on an unknown option, ValueError on a bad value."""
        given = cls.arguments(*args, **kwargs)
        isolation = parse_isolation(given["isolation"])
        limit = given["node_memory_limit"]
        node_memory_limit = None if limit is None else parse_size(limit)
        transport, workers = given["transport"], given["workers"]
        uses_cache = transport_class(transport).uses_cache
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        budget = None if given["memory_budget"] is None else parse_budget(given["memory_budget"])
        cache = bool(given["cache"]) and uses_cache
        cache_bytes = None
        if cache:
            cache_bytes = given["cache_bytes"]
            if cache_bytes is None:
                cache_bytes = os.environ.get("ZERROW_CACHE_BYTES")
            cache_bytes = (parse_size(cache_bytes) if cache_bytes is not None
                           else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4)
        return cls(
            workers=workers or max(1, os.cpu_count() or 1), transport=transport,
            preload=bool(given["preload"]), memory_budget=budget, tolerance=given["tolerance"],
            strict_budget=bool(given["strict_budget"]) and budget is not None, cache=cache,
            cache_bytes=cache_bytes, spill_dir=given["spill_dir"] or rundirs.spill_base(),
            copy_dir=rundirs.copy_base(), isolation=isolation,
            node_memory_limit=node_memory_limit,
            check_invariants=os.environ.get("ZERROW_DEBUG_INVARIANTS", "0") not in ("", "0"))
