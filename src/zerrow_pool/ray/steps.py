"""Steps as they travel to an agent, and the fragment pipelines agents run.

A node crosses to another machine as its name, inputs and FunctionRef (the
module and file its workers import it from), never as a pickled function: the
pipeline file must exist at the same path on every machine, as it must for
zerrow's own workers. Sources pickle as they are.
"""
from __future__ import annotations

from ..pipeline.dag import FunctionRef, Node, Pipeline, Source
from ..pipeline.states import StepKind


class RemoteNode(Node):
    """A node rebuilt from its attributes, less its function: workers import that by ref."""

    memory_limit = None

    def __init__(self, attrs: dict):
        self.__dict__.update(attrs)
        self.fn = None


GIVEN_REF = FunctionRef(__name__, None, "given")  # runs nothing; one constant for sandboxes


def given(name: str) -> RemoteNode:
    """A step whose output another machine produced: the agent hands its table in."""
    return RemoteNode(dict(name=name, kind=StepKind.GIVEN, ref=GIVEN_REF, params=(), inputs=(),
                           inputs_as=(), retries=0))


def describe(step):
    """A picklable description of a pipeline step."""
    if isinstance(step, Source):
        return step
    return {k: v for k, v in vars(step).items() if k != "fn"}


def rebuild(desc):
    return desc if isinstance(desc, Source) else RemoteNode(desc)


def fragment_pipeline(name: str, steps: list, given_names: list) -> Pipeline:
    """The pipeline an agent runs: given steps first, then the fragment's own."""
    return Pipeline(name, [given(n) for n in given_names] + [rebuild(d) for d in steps])
