"""Authoring API: nodes, Parquet sources and the pipeline DAG.

A node is a plain Python function over ``pyarrow.Table`` objects.  Its
parameter names are the names of its upstream nodes::

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

import pyarrow as pa


class PipelineDefinitionError(ValueError):
    """The pipeline is malformed: unknown inputs, cycles, duplicate names."""


@dataclass(frozen=True)
class FunctionRef:
    """How a worker finds a node function: module name, its file, qualname."""

    module: str
    file: str | None
    qualname: str


class Node:
    """A pipeline step: a function of its upstream tables returning one table."""

    kind = "node"

    def __init__(self, fn, *, name: str | None = None, retries: int = 0, inputs=None):
        if not callable(fn):
            raise TypeError(f"@node expects a function, got {fn!r}")
        self.fn = fn
        self.name = name or fn.__name__
        self.retries = int(retries)
        if self.retries < 0:
            raise ValueError("retries must be >= 0")
        params = inspect.signature(fn).parameters.values()
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise PipelineDefinitionError(
                    f"node {self.name!r}: *args/**kwargs cannot name upstream nodes")
        self.params = tuple(p.name for p in params)
        # ``inputs`` maps parameter name -> upstream node name when they differ.
        self.inputs = tuple((inputs or {}).get(p, p) for p in self.params)
        self.ref = FunctionRef(fn.__module__, _source_file(fn), fn.__qualname__)
        if "<locals>" in fn.__qualname__:
            raise PipelineDefinitionError(
                f"node {self.name!r} is defined inside a function; workers import nodes "
                "by module and name, so define it at module level")

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __repr__(self):
        return f"<node {self.name}({', '.join(self.inputs)})>"


def _source_file(fn) -> str | None:
    try:
        f = inspect.getsourcefile(fn) or inspect.getfile(fn)
    except TypeError:
        return None
    return os.path.abspath(f) if f else None


def node(fn=None, *, name: str | None = None, retries: int = 0, inputs=None):
    """Mark a function as a pipeline node.

    ``@node`` or ``@node(retries=2, name="x", inputs={"param": "upstream"})``.
    Parameters name upstream nodes; the function receives ``pa.Table`` objects
    and must return a ``pa.Table`` (a ``RecordBatch`` is accepted too).
    """
    def wrap(f):
        return Node(f, name=name, retries=retries, inputs=inputs)

    return wrap(fn) if fn is not None else wrap


class Source:
    """A Parquet input read with ``pyarrow.dataset``, columns and filter pushed down."""

    kind = "source"
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
    state: dict[str, int] = {}
    order: list = []

    def visit(n, path):
        st = state.get(n)
        if st == 2:
            return
        if st == 1:
            cyc = path[path.index(n):] + [n]
            raise PipelineDefinitionError("cycle: " + " -> ".join(cyc))
        state[n] = 1
        for up in by_name[n].inputs:
            visit(up, path + [n])
        state[n] = 2
        order.append(by_name[n])

    for n in by_name:
        visit(n, [])
    return order


def load_pipeline_file(path: str) -> Pipeline:
    """Import ``path`` as a module and build its Pipeline (used by the CLI)."""
    import importlib.util

    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"pipeline file {path} does not exist")
    modname = "_zerrow_pipeline_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(modname, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    spec.loader.exec_module(mod)
    return Pipeline.from_module(mod, name=os.path.splitext(os.path.basename(path))[0])


def as_table(obj, node_name: str) -> pa.Table:
    """Check a node's return value and normalise it to a Table."""
    if isinstance(obj, pa.Table):
        return obj
    if isinstance(obj, pa.RecordBatch):
        return pa.Table.from_batches([obj])
    raise TypeError(f"node {node_name!r} returned {type(obj).__name__}, expected pyarrow.Table")
