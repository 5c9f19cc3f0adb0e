"""zerrow pipelines: DAGs of Python functions over Arrow tables, one worker
process per running node, tables flowing between processes without copies.

Authoring::

    from zerrow_pool import pipeline as zp

    trips = zp.parquet("trips", "data/trips", columns=["fare", "tip"])

    @zp.node
    def tipped(trips):
        return trips.filter(pc.field("tip") > 0)

    @zp.node(inputs_as="polars")       # Polars or pandas in, any Arrow-exportable out
    def by_fare(tipped):
        return tipped.group_by("fare").len()

    pipeline = zp.Pipeline("tips", [trips, tipped, by_fare])

Running::

    with zp.Runtime(workers=2, transport="zerrow", memory_budget="4G") as rt:
        result = rt.run(pipeline)
        print(result.report.format())
        table = result["by_fare"]   # sinks are kept; others with outputs=[...]

or from the shell: ``zerrow run my_pipeline.py --workers 2``.
"""
from .budget import BudgetExceeded, fmt_bytes, parse_size
from .runtime import Runtime, run
from .frames import NodeOutputError
from .dag import Node, Pipeline, PipelineDefinitionError, Source, load_pipeline_file, node, parquet
from .report import NodeFailed, OutputNotKept, RunReport, RunResult
from .workers import WorkerStartError
from .zerrow_api import ZerrowUnavailable
from .zerrow_api import available as zerrow_available

__all__ = [
    "BudgetExceeded", "Node", "NodeFailed", "NodeOutputError", "OutputNotKept", "Pipeline",
    "PipelineDefinitionError", "RunReport", "RunResult", "Runtime", "Source", "WorkerStartError",
    "ZerrowUnavailable", "fmt_bytes", "load_pipeline_file", "node", "parquet", "parse_size", "run",
    "zerrow_available",
]
