"""A pipeline file's path, checked before anything loads it, and the error for a bad pipeline.

Light on purpose (the standard library only): the ``zerrow run`` client checks
the path here before it hands the run to the service, without loading the
runtime or pyarrow.
"""
from __future__ import annotations

import os


class PipelineDefinitionError(ValueError):
    """The pipeline is malformed: unknown inputs, cycles, duplicate names."""


def check_pipeline_path(path: str) -> str:
    """The absolute path of a pipeline file, checked before anything loads it.

    Raises FileNotFoundError or PipelineDefinitionError naming the problem."""
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"pipeline file {path} does not exist")
    if os.path.isdir(path):
        raise PipelineDefinitionError(
            f"{path} is a directory; give the Python file that defines the pipeline's nodes")
    if not path.endswith(".py"):
        hint = (" (to read Parquet data, write a pipeline file with zp.parquet(name, path))"
                if path.endswith((".parquet", ".pq")) else "")
        raise PipelineDefinitionError(f"{path} is not a Python file (.py){hint}")
    return path
