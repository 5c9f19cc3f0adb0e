"""The messages between the coordinator and its workers, as typed data.

Vocabulary:

- a *request* asks a worker to run one task: ``NodeRequest`` (call a node's
  function on its inputs), ``ReadRequest`` (read a Parquet source whole) or
  ``DecodeRequest`` (decode one row group's columns for the decode cache);
  its ``op`` is the task's kind (``states.Op``). ``Stop`` asks it to exit.
  A zygote forwards a request to the sandbox it forks for it, as it came or
  with its own terms (``limit_by_kernel``, ``keep_free``);
- the *hello* (``Hello``) is the first message a worker sends, once ready;
- a *reply* answers a request: ``Done`` (the published output, its timing
  and peak) or ``Failed`` (what went wrong). Both say ``ok``; a reply is
  ``exiting`` when its worker ends itself after sending it.

Each message travels pickled by wire.py, the descriptors it refers to
beside it: a node's inputs (each spec's ``fds`` slice) and a ``Done``'s
output. Messages are frozen: whoever changes a term sends a new message
(``dataclasses.replace``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .states import Op

# Seconds (and counts) a task took, by phase: ``input_s``, ``compute_s``,
# ``publish_s``, ``total_s``, ``cpu_user_s``, ``cpu_sys_s``, ``minor_faults``;
# a sandbox's first task adds ``sandbox_start_s`` and ``forked_at``. Summed
# key by key over a source's decodes; reports print it as it is.
Timing = dict[str, float]


@dataclass(frozen=True, kw_only=True)
class Request:
    """What every task is asked with.

    ``name``: the pipeline step. ``out_dir``: where a file transport writes
    the output. ``keep_free``: return freed pages to the kernel at once.
    ``mem_cap``: bytes the task may allocate in the pool (its share of a
    strict budget), None for no cap.
    """

    op: ClassVar[Op]
    name: str
    out_dir: str
    keep_free: bool = False
    mem_cap: int | None = None


@dataclass(frozen=True, kw_only=True)
class NodeRequest(Request):
    """Call node function ``fn`` (a FunctionRef) on ``inputs`` (input specs,
    converted per ``inputs_as``), in the sandbox for pipeline code ``sandbox``.

    ``memory_limit``: the node's limit in bytes, or None; ``limit_by_kernel``:
    a cgroup enforces it (else the worker's pool does). ``expected_bytes``:
    what the node allocated at most last time, 0 if it has not run yet (its
    pool scope then takes warm memory from one spare that covers it, see
    ``zerrow_pool.scope``)."""

    op: ClassVar[Op] = Op.NODE
    fn: object
    inputs: list = field(default_factory=list)
    inputs_as: tuple = ()
    memory_limit: int | None = None
    sandbox: str = ""
    limit_by_kernel: bool = False
    expected_bytes: int = 0


@dataclass(frozen=True, kw_only=True)
class ReadRequest(Request):
    """Read Parquet ``files`` whole: ``columns`` (None: all), rows passing ``filter``."""

    op: ClassVar[Op] = Op.READ
    files: list
    columns: list | None = None
    filter: object = None


@dataclass(frozen=True, kw_only=True)
class DecodeRequest(Request):
    """Decode ``columns`` of row group ``row_group`` of Parquet ``file``, read
    by the file's full ``schema``, rows passing ``filter``."""

    op: ClassVar[Op] = Op.DECODE
    file: str
    row_group: int
    columns: list
    schema: object
    filter: object = None


@dataclass(frozen=True)
class Stop:
    """Exit (a zygote stops its sandboxes first)."""

    op: ClassVar[Op] = Op.STOP


@dataclass(frozen=True)
class Hello:
    """A worker is ready: its ``pid``, whether the zerrow preload library is
    active in it, and (zygotes) why no memory cgroup can be made, or None."""

    pid: int
    preload_active: bool
    cgroup_error: str | None = None


@dataclass(frozen=True)
class Done:
    """A task ran: its published output (``Published``, a decode's
    ``PublishedColumns``), its ``timing`` and ``peak``, the bytes it allocated
    in the pool at most."""

    ok: ClassVar[bool] = True
    exiting: ClassVar[bool] = False
    result: object
    timing: Timing
    peak: int


@dataclass(frozen=True)
class Failed:
    """A task failed: ``error`` as the user sees it, ``error_type`` its
    exception's name (or ``MemoryLimitExceeded``, ``BudgetExceeded``,
    ``SandboxDied``). ``exiting``: the worker ends itself after this reply.
    A failure reports no peak."""

    ok: ClassVar[bool] = False
    peak: ClassVar[int] = 0
    error: str
    error_type: str
    exiting: bool = False

