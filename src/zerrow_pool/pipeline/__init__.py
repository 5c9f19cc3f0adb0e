"""zerrow pipelines: DAGs of Python functions over Arrow tables, one worker
process per running node, tables flowing between processes without copies.

Authoring::

    from zerrow_pool import pipeline as zp

    trips = zp.parquet("trips", "data/trips", columns=["fare", "tip"])

    @zp.node
    def tipped(trips):
        return trips.filter(pc.field("tip") > 0)

    pipeline = zp.Pipeline("tips", [trips, tipped])

Running::

    with zp.Runtime(workers=2, transport="zerrow", memory_budget="4G") as rt:
        result = rt.run(pipeline)
        print(result.report.format())
        table = result["tipped"]

or from the shell: ``zerrow run my_pipeline.py --workers 2``.
"""
from .budget import BudgetExceeded, fmt_bytes, parse_size
from .coordinator import Runtime, run
from .dag import Node, Pipeline, PipelineDefinitionError, Source, load_pipeline_file, node, parquet
from .report import NodeFailed, RunReport, RunResult
from .workers import WorkerStartError
from .zerrow_api import ZerrowUnavailable
from .zerrow_api import available as zerrow_available

__all__ = [
    "BudgetExceeded", "Node", "NodeFailed", "Pipeline", "PipelineDefinitionError", "RunReport",
    "RunResult", "Runtime", "Source", "WorkerStartError", "ZerrowUnavailable", "fmt_bytes",
    "load_pipeline_file", "node", "parquet", "parse_size", "run", "zerrow_available",
]
