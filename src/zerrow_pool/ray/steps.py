"""Steps as they travel to an agent, and the fragment pipelines agents run.

A node crosses to another machine as its name, inputs and FunctionRef (the
module and file its workers import it from), never as a pickled function: the
pipeline file must exist at the same path on every machine, as it must for
zerrow's own workers. Sources pickle as they are.
"""
from __future__ import annotations

from ..pipeline.dag import FunctionRef, Node, Pipeline, Source


class RemoteNode(Node):
    """A node rebuilt from its description: workers import its function by ref."""

    def __init__(self, name, ref, params, inputs, inputs_as, retries, kind="node"):
        self.fn = None
        self.name, self.ref, self.params = name, ref, tuple(params)
        self.inputs, self.inputs_as = tuple(inputs), tuple(inputs_as)
        self.retries, self.kind = retries, kind


GIVEN_REF = FunctionRef(__name__, None, "given")  # runs nothing; one constant for sandboxes


def given(name: str) -> RemoteNode:
    """A step whose output another machine produced: the agent hands its table in."""
    return RemoteNode(name, GIVEN_REF, (), (), (), 0, kind="given")


def describe(step):
    """A picklable description of a pipeline step."""
    if isinstance(step, Source):
        return step
    return ("node", step.name, step.ref, step.params, step.inputs, step.inputs_as, step.retries)


def rebuild(desc):
    if isinstance(desc, Source):
        return desc
    _, *fields = desc
    return RemoteNode(*fields)


def fragment_pipeline(name: str, steps: list, given_names: list) -> Pipeline:
    """The pipeline an agent runs: given steps first, then the fragment's own."""
    return Pipeline(name, [given(n) for n in given_names] + [rebuild(d) for d in steps])
