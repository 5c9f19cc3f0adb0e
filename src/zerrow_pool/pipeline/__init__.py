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
import importlib as _importlib

# Where each public name lives; they load on first use (PEP 562), so that the
# `zerrow run` client can use the light modules (budget, report, states) without
# the runtime and pyarrow behind it.
_EXPORTS = {
    **dict.fromkeys(["BudgetExceeded", "fmt_bytes", "parse_size"], "budget"),
    **dict.fromkeys(["Runtime", "run"], "runtime"),
    "NodeOutputError": "frames",
    **dict.fromkeys(["Node", "Pipeline", "Source", "load_pipeline_file", "node", "parquet"], "dag"),
    "PipelineDefinitionError": "pipeline_file",
    **dict.fromkeys(["NodeFailed", "OutputNotKept", "RunReport", "RunResult"], "report"),
    "WorkerStartError": "workers",
    "ZerrowUnavailable": "zerrow_api",
    "zerrow_available": "zerrow_api",
}
_RENAMED = {"zerrow_available": "available"}

__all__ = [
    "BudgetExceeded", "Node", "NodeFailed", "NodeOutputError", "OutputNotKept", "Pipeline",
    "PipelineDefinitionError", "RunReport", "RunResult", "Runtime", "Source", "WorkerStartError",
    "ZerrowUnavailable", "fmt_bytes", "load_pipeline_file", "node", "parquet", "parse_size", "run",
    "zerrow_available",
]


def __getattr__(name: str):
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(f"{__name__}.{where}"), _RENAMED.get(name, name))
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
