"""Where each step runs, and how a placed DAG splits into per-machine fragments.

Pure functions over pipelines and machine descriptions (no Ray), so the rules
can be read and tested on their own:

- a DAG's connected steps go to one machine (edges inside a machine stay
  zerrow shares, copying nothing) when they fit its memory, else its branches
  spread at its forks;
- independent DAGs (connected components) spread over machines, least loaded
  first, preferring a machine whose agent already decoded one of their sources;
- a step pinned to a custom Ray resource runs on a machine that has it, and
  unpinned steps follow their inputs.

A *fragment* is a group of steps on one machine that its agent runs as one
local run; fragments depend on each other only through cross-machine edges or
through steps held on one machine between runs, and their graph is acyclic.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..pipeline.states import StepKind


# A DAG holds its decoded sources and, at times, about as much again in intermediates.
SPLIT_FACTOR = 2


class PlacementError(RuntimeError):
    """No machine can run a step (its pin names a resource no live machine has)."""


@dataclass
class Machine:
    """A Ray node with a zerrow agent: its id, label and custom resources."""

    node_id: str
    label: str
    resources: dict = field(default_factory=dict)
    sources_seen: set = field(default_factory=set)  # sources its agent decoded (cache)
    workers: int = 0
    memory: int = 0  # bytes its agent may hold (its budget, else the node's); 0: unknown


@dataclass
class Fragment:
    """Steps of one pipeline that one machine runs together."""

    key: int
    pipeline: object  # the Pipeline
    machine: str  # node id
    steps: list  # step names, in the pipeline's topological order
    deps: set = field(default_factory=set)  # keys of fragments it reads from

    def external_inputs(self) -> list:
        """Steps outside this fragment that its steps read, in a stable order."""
        inside = set(self.steps)
        out = []
        for name in self.steps:
            for up in self.pipeline.by_name[name].inputs:
                if up not in inside and up not in out:
                    out.append(up)
        return out


def source_identity(src) -> str:
    """What a decode cache keys a source by: its path, columns and filter."""
    return f"{src.path}|{src.columns}|{src.filter_key()}"


def components(pipeline) -> list:
    """The pipeline's connected components (lists of step names, topological order)."""
    parent = {s.name: s.name for s in pipeline.order}

    def find(n):
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for s in pipeline.order:
        for up in s.inputs:
            parent[find(s.name)] = find(up)
    groups: dict = {}
    for s in pipeline.order:
        groups.setdefault(find(s.name), []).append(s.name)
    return list(groups.values())


def machines_with(resource: str, machines) -> list:
    return [m for m in machines if m.resources.get(resource, 0) > 0]


def decoded_bytes(src) -> int:
    """What decoding a source takes, from its Parquet footers: the uncompressed
    bytes of the columns it reads (before its filter)."""
    import pyarrow.parquet as pq

    total = 0
    for path in src.files():
        meta = pq.ParquetFile(path).metadata
        for i in range(meta.num_row_groups):
            rg = meta.row_group(i)
            for j in range(rg.num_columns):
                col = rg.column(j)
                if src.columns is None or col.path_in_schema.split(".")[0] in src.columns:
                    total += col.total_uncompressed_size
    return total


def place(pipelines, machines, pins=None, load=None, sizes=None) -> dict:
    """``{(pipeline name, step): node id}`` for every step of ``pipelines``.

    ``pins`` maps a step name to a custom resource name; ``load`` counts steps
    already placed per node id (updated here); ``sizes`` maps (pipeline name,
    source name) to its ``decoded_bytes``: a connected DAG that needs more than
    its machine's memory (SPLIT_FACTOR times its sources) is split at its forks,
    every branch after the first going to the least loaded machine."""
    if not machines:
        raise PlacementError("no live Ray node runs a zerrow agent")
    pins = pins or {}
    load = load if load is not None else {}
    by_id = {m.node_id: m for m in machines}
    out: dict = {}
    sizes = sizes or {}
    for p in pipelines:
        for comp in components(p):
            home = _home(p, comp, machines, pins, load)
            need = SPLIT_FACTOR * sum(sizes.get((p.name, n), 0) for n in comp)
            split = len(machines) > 1 and need > by_id[home].memory > 0
            for name in comp:
                step = p.by_name[name]
                fork = p.consumers[step.inputs[0]] if step.inputs else []
                if name in pins:
                    chosen = _pinned(name, pins[name], machines, load)
                elif split and len(fork) > 1 and fork.index(name) > 0:
                    chosen = min(machines, key=lambda m: load.get(m.node_id, 0)).node_id
                elif step.inputs:
                    votes: dict = {}
                    for up in step.inputs:  # follow the inputs; first input breaks ties
                        m = out[(p.name, up)]
                        votes[m] = votes.get(m, 0) + 1
                    chosen = max(votes, key=lambda m: (votes[m], m == out[(p.name, step.inputs[0])]))
                else:
                    chosen = home
                out[(p.name, name)] = chosen
                load[chosen] = load.get(chosen, 0) + 1
    assert set(out.values()) <= set(by_id)
    return out


def _pinned(step: str, resource: str, machines, load) -> str:
    able = machines_with(resource, machines)
    if not able:
        raise PlacementError(f"step {step!r} is pinned to resource {resource!r}, which no live "
                             f"Ray node offers (nodes: {', '.join(m.label for m in machines)})")
    return min(able, key=lambda m: load.get(m.node_id, 0)).node_id


def _home(p, comp, machines, pins, load) -> str:
    """The machine of a connected component's unpinned sources."""
    for name in comp:
        if name in pins:
            return _pinned(name, pins[name], machines, load)
    wanted = {source_identity(p.by_name[n]) for n in comp if p.by_name[n].kind == StepKind.SOURCE}
    return min(machines, key=lambda m: (-len(wanted & m.sources_seen),
                                        load.get(m.node_id, 0))).node_id


def fragments(pipeline, where: dict, first_key: int = 0) -> list:
    """Split a placed pipeline into fragments: each step joins the fragments of
    its same-machine inputs unless that would make the fragment graph cyclic."""
    frag_of: dict = {}
    frags: dict = {}
    key = first_key
    for step in pipeline.order:
        m = where[(pipeline.name, step.name)]
        local = []
        for up in step.inputs:
            f = frag_of[up]
            if frags[f].machine == m and f not in local:
                local.append(f)
        external = {frag_of[up] for up in step.inputs if frags[frag_of[up]].machine != m}
        target = _merge_target(frags, local, external)
        if target is None:
            target = key
            key += 1
            frags[target] = Fragment(target, pipeline, m, [])
        else:
            for f in local:
                if f != target:
                    _absorb(frags, frag_of, target, f)
        frags[target].steps.append(step.name)
        frags[target].deps |= external | {frag_of[up] for up in step.inputs} - {target}
        frag_of[step.name] = target
    order = {n.name: i for i, n in enumerate(pipeline.order)}
    for f in frags.values():
        f.steps.sort(key=order.get)
    return _topological(frags)


def _merge_target(frags, local, external):
    """The fragment a step can join (merging all its same-machine input fragments),
    or None: a merged fragment must not reach itself through another fragment."""
    if not local:
        return None
    merged = set(local)
    for f in merged | external:
        if f in merged:
            continue
        if _reaches(frags, f, merged):
            return None
    for f in merged:  # one member depending on another through an outside fragment
        for d in frags[f].deps - merged:
            if _reaches(frags, d, merged):
                return None
    return local[0]


def _reaches(frags, start, targets) -> bool:
    seen, todo = set(), [start]
    while todo:
        f = todo.pop()
        if f in targets:
            return True
        if f not in seen:
            seen.add(f)
            todo += frags[f].deps
    return False


def _absorb(frags, frag_of, target, other) -> None:
    t, o = frags[target], frags.pop(other)
    t.steps += o.steps
    t.deps |= o.deps
    for n in o.steps:
        frag_of[n] = target
    for f in frags.values():
        if other in f.deps:
            f.deps.discard(other)
            f.deps.add(target)
    t.deps.discard(target)


def _topological(frags) -> list:
    done, out = set(), []
    while len(out) < len(frags):
        ready = [f for k, f in sorted(frags.items()) if k not in done and f.deps <= done]
        if not ready:
            raise AssertionError("fragment graph is cyclic")
        for f in ready:
            done.add(f.key)
            out.append(f)
    return out
