"""Authoring API: nodes, Parquet sources and the pipeline DAG.

A node is a plain Python function over tables.  Its parameter names are the
names of its upstream nodes; it receives ``pyarrow.Table`` objects (or Polars
/ pandas DataFrames, see ``inputs_as``) and returns a table in any form
``frames.to_table`` accepts::

    from zerrow_pool import pipeline as zp

    trips = zp.parquet("trips", "data/trips/", columns=["fare", "tip"],
                       filter=pc.field("fare") > 0)

    @zp.node
    def with_tip_pct(trips):
        return trips.append_column("tip_pct", pc.divide(trips["tip"], trips["fare"]))

    pipeline = zp.Pipeline("tips", [trips, with_tip_pct])

Node functions run in worker processes, which import the module that defines
them by file path (under a private module name, like multiprocessing's spawn),
so they must live at module level and the module must not start work at import
time (guard scripts with ``if __name__ == "__main__":``).
"""
from __future__ import annotations

import inspect
import os
import sys
from dataclasses import dataclass, field

from . import frames
from .budget import parse_size
from .pipeline_file import PipelineDefinitionError, check_pipeline_path
from .states import StepKind


@dataclass(frozen=True)
class FunctionRef:
    """How a worker finds a node function: module name, its file, qualname."""

    module: str
    file: str | None
    qualname: str


class Node:
    """A pipeline step: a function of its upstream tables returning one table.

    ``inputs_as`` holds, per parameter, the frame type the function receives
    (``"arrow"``, ``"polars"`` or ``"pandas"``).
    """

    kind = StepKind.NODE

    def __init__(self, fn, *, name: str | None = None, retries: int = 0, inputs=None,
                 inputs_as=None, memory_limit=None):
        if not callable(fn):
            raise TypeError(f"@node expects a function, got {fn!r}")
        self.fn = fn
        self.name = name or fn.__name__
        self.retries = int(retries)
        if self.retries < 0:
            raise ValueError("retries must be >= 0")
        try:
            self.memory_limit = None if memory_limit is None else parse_size(memory_limit)
        except ValueError as e:
            raise PipelineDefinitionError(f"node {self.name!r}: memory_limit: {e}") from None
        sig = inspect.signature(fn)
        try:
            frames.check_return_annotation(sig.return_annotation, self.name)
        except frames.NodeOutputError as e:
            raise PipelineDefinitionError(str(e)) from None
        params = sig.parameters.values()
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise PipelineDefinitionError(
                    f"node {self.name!r}: *args/**kwargs cannot name upstream nodes")
        self.params = tuple(p.name for p in params)
        # ``inputs`` maps parameter name -> upstream node name when they differ.
        self.inputs = tuple((inputs or {}).get(p, p) for p in self.params)
        self.inputs_as = _input_kinds(self.name, params, inputs_as)
        self.ref = FunctionRef(fn.__module__, _source_file(fn), fn.__qualname__)
        if "<locals>" in fn.__qualname__:
            raise PipelineDefinitionError(
                f"node {self.name!r} is defined inside a function; workers import nodes "
                "by module and name, so define it at module level")

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __repr__(self):
        return f"<node {self.name}({', '.join(self.inputs)})>"


def _input_kinds(name, params, inputs_as) -> tuple:
    """Per parameter: ``inputs_as`` (one kind or {param: kind}), else its annotation, else arrow."""
    where = f"node {name!r}"
    if isinstance(inputs_as, dict):
        unknown = set(inputs_as) - {p.name for p in params}
        if unknown:
            raise PipelineDefinitionError(f"{where}: inputs_as names {sorted(unknown)}, which are "
                                          "not parameters of the function")
        chosen = {p: frames.check_kind(k, where) for p, k in inputs_as.items()}
    elif inputs_as is not None:
        chosen = {p.name: frames.check_kind(inputs_as, where) for p in params}
    else:
        chosen = {}
    return tuple(chosen.get(p.name) or frames.kind_of_annotation(p.annotation) or "arrow"
                 for p in params)


def _source_file(fn) -> str | None:
    try:
        f = inspect.getsourcefile(fn) or inspect.getfile(fn)
    except TypeError:
        return None
    return os.path.abspath(f) if f else None


def node(fn=None, *, name: str | None = None, retries: int = 0, inputs=None, inputs_as=None,
         memory_limit=None):
    """Mark a function as a pipeline node.

    Use as ``@node`` or ``@node(retries=2, name="x", inputs={"param": "upstream"})``.

    Parameters
    ----------
    fn : callable
        The node function. Its parameter names are the names of its upstream
        nodes (or sources).
    name : str, optional
        The node's name; defaults to the function's name.
    retries : int, default 0
        Times to run the node again after it raises or its worker dies.
    inputs : dict, optional
        ``{parameter: upstream}`` where a parameter is named differently from
        the node it reads.
    inputs_as : {"arrow", "polars", "pandas"} or dict, optional
        The frame type the function receives, for all parameters or per
        parameter (``{"trips": "polars"}``). Without it, a parameter annotated
        ``pl.DataFrame`` or ``pd.DataFrame`` receives that type, any other a
        ``pyarrow.Table``. Polars frames are built zero-copy where Polars
        allows; pandas frames have Arrow-backed columns (``pd.ArrowDtype``),
        which wrap the Arrow memory instead of copying it.
    memory_limit : int or str, optional
        The most memory one invocation of the node may hold, e.g. ``"1G"``
        (default: the runtime's ``node_memory_limit``, else none). The kernel
        enforces it with a memory cgroup per invocation where the machine
        allows one (else zerrow's pool does); a node over its limit fails
        with a message naming it, and the run's other nodes carry on. Its
        zero-copy inputs are not charged to it. See docs/SANDBOX.md.

    Returns
    -------
    Node
        The function may return a pyarrow ``Table`` or ``RecordBatch``, any
        object with ``__arrow_c_stream__`` / ``__arrow_c_array__`` (Polars,
        pandas, DuckDB relations, nanoarrow), a ``RecordBatchReader`` or an
        iterable of record batches (a generator works). Anything else fails
        the node with a message naming the type returned.
    """
    def wrap(f):
        return Node(f, name=name, retries=retries, inputs=inputs, inputs_as=inputs_as,
                    memory_limit=memory_limit)

    return wrap(fn) if fn is not None else wrap


class Source:
    """A Parquet input read with ``pyarrow.dataset``, columns and filter pushed down."""

    kind = StepKind.SOURCE
    inputs: tuple = ()
    retries = 0

    def __init__(self, name: str, path, *, columns=None, filter=None, retries: int = 0):
        self.name = name
        self.path = os.fspath(path)
        self.columns = list(columns) if columns is not None else None
        self.filter = filter
        self.retries = retries

    def files(self) -> list[str]:
        """The Parquet files this source reads, in a stable order."""
        if os.path.isdir(self.path):
            out = []
            for root, _, names in os.walk(self.path):
                out += [os.path.join(root, n) for n in names
                        if n.endswith((".parquet", ".pq")) and not n.startswith((".", "_"))]
            if not out:
                raise FileNotFoundError(f"source {self.name!r}: no .parquet files under {self.path}")
            return sorted(out)
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"source {self.name!r}: {self.path} does not exist")
        return [self.path]

    def filter_key(self) -> str:
        return "" if self.filter is None else str(self.filter)

    def __repr__(self):
        return f"<parquet source {self.name} {self.path}>"


def parquet(name: str, path, *, columns=None, filter=None, retries: int = 0) -> Source:
    """A Parquet source node named ``name`` (file or directory of files)."""
    return Source(name, path, columns=columns, filter=filter, retries=retries)


@dataclass
class Pipeline:
    """A validated DAG of sources and nodes, in a topological order."""

    name: str
    steps: list = field(default_factory=list)

    def __post_init__(self):
        by_name = {}
        for s in self.steps:
            if not isinstance(s, (Node, Source)):
                raise PipelineDefinitionError(f"{s!r} is not a node or source")
            if s.name in by_name and by_name[s.name] is not s:
                raise PipelineDefinitionError(f"two steps are named {s.name!r}")
            by_name[s.name] = s
        for s in self.steps:
            for up in s.inputs:
                if up not in by_name:
                    raise PipelineDefinitionError(
                        f"node {s.name!r} takes {up!r}, which names no node or source of "
                        f"pipeline {self.name!r} (known: {', '.join(sorted(by_name))})")
        self.by_name = by_name
        self.order = _toposort(by_name)
        self.consumers = {n: [] for n in by_name}
        for s in self.order:
            for up in dict.fromkeys(s.inputs):
                self.consumers[up].append(s.name)

    @property
    def code_identity(self) -> str:
        """The functions the pipeline runs: its sandboxes run nothing else (see
        zygote.py). Pipelines built from the same functions (one file run over
        several inputs) are one program and share them."""
        return repr(sorted({(s.ref.module, s.ref.file or "", s.ref.qualname)
                            for s in self.steps if isinstance(s, Node)}))

    @property
    def sinks(self) -> list[str]:
        """Steps nobody consumes: the pipeline's results."""
        return [s.name for s in self.order if not self.consumers[s.name]]

    @classmethod
    def from_module(cls, module, name: str | None = None) -> "Pipeline":
        """The module's ``pipeline`` attribute, else all its nodes and sources."""
        found = getattr(module, "pipeline", None)
        if isinstance(found, Pipeline):
            return found
        if callable(found) and not isinstance(found, Node):
            made = found()
            if isinstance(made, Pipeline):
                return made
        steps = [v for v in vars(module).values() if isinstance(v, (Node, Source))]
        if not steps:
            raise PipelineDefinitionError(
                f"{getattr(module, '__file__', module)} defines no nodes, sources or `pipeline`")
        return cls(name or getattr(module, "__name__", "pipeline"), steps)


def _toposort(by_name: dict) -> list:
    """The steps, each after its inputs (depth first); raises naming a cycle."""
    visiting: set = set()  # on the path being explored: meeting one again is a cycle
    placed: set = set()
    order: list = []

    def visit(name, path):
        if name in placed:
            return
        if name in visiting:
            cycle = path[path.index(name):] + [name]
            raise PipelineDefinitionError("cycle: " + " -> ".join(cycle))
        visiting.add(name)
        for upstream in by_name[name].inputs:
            visit(upstream, path + [name])
        visiting.discard(name)
        placed.add(name)
        order.append(by_name[name])

    for name in by_name:
        visit(name, [])
    return order


def load_pipeline_file(path: str) -> Pipeline:
    """Import ``path`` as a module and build its Pipeline (used by the CLI).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    PipelineDefinitionError
        ``path`` is not a Python file, does not compile, or raises while it is
        imported (the message shows the user's own traceback frames only).
    """
    import importlib.util

    path = check_pipeline_path(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    modname = "_zerrow_pipeline_" + stem
    spec = importlib.util.spec_from_file_location(modname, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    try:
        spec.loader.exec_module(mod)
    except SyntaxError as e:
        sys.modules.pop(modname, None)
        raise PipelineDefinitionError(_syntax_message(e)) from None
    except Exception as e:  # noqa: BLE001 - the user's module failed while importing
        sys.modules.pop(modname, None)
        raise PipelineDefinitionError(
            f"importing {path} failed:\n" + user_traceback(e).rstrip()) from None
    return Pipeline.from_module(mod, name=stem)


def _syntax_message(e: SyntaxError) -> str:
    where = f"{e.filename}, line {e.lineno}"
    text = (e.text or "").rstrip("\n")
    caret = ""
    if text and e.offset:
        stripped = text.lstrip()
        caret = "\n    " + " " * max(0, e.offset - 1 - (len(text) - len(stripped))) + "^"
        text = stripped
    return f"syntax error in {where}: {e.msg}" + (f"\n    {text}{caret}" if text else "")


def _internal_file(filename: str) -> bool:
    """Frames of zerrow itself or of the import machinery, hidden from users' tracebacks."""
    here = os.path.dirname(os.path.abspath(__file__))  # .../zerrow_pool/pipeline
    path = os.path.abspath(filename)
    if path.startswith(os.path.join(here, "demos") + os.sep):
        return False  # the demo pipelines are user code
    return (path.startswith(os.path.dirname(here) + os.sep)
            or filename.startswith("<frozen importlib"))


def user_traceback(exc: BaseException) -> str:
    """``exc`` formatted like Python would, without zerrow's or importlib's frames."""
    import traceback

    te = traceback.TracebackException.from_exception(exc)
    for t in _chain(te):
        t.stack = traceback.StackSummary.from_list(
            [f for f in t.stack if not _internal_file(f.filename)])
    return "".join(te.format())


def _chain(te):
    seen = []
    while te is not None and te not in seen:
        seen.append(te)
        te = te.__cause__ or (None if te.__suppress_context__ else te.__context__)
    return seen
