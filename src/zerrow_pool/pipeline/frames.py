"""Node inputs and outputs in the dataframe library a node is written for.

A node receives ``pyarrow.Table`` inputs unless it asks for another library
(``@node(inputs_as="polars")`` or a parameter annotated ``pl.DataFrame`` /
``pd.DataFrame``), and may return anything Arrow can import:

- ``pyarrow.Table`` or ``RecordBatch``;
- any object with ``__arrow_c_stream__`` (Polars and pandas DataFrames,
  DuckDB relations, nanoarrow streams) or ``__arrow_c_array__`` (a struct
  array, read as a record batch);
- a ``RecordBatchReader``, or any iterable of record batches (a generator
  function that yields batches works).

Conversions are zero-copy where the library allows; which ones copy, and how
many bytes, is measured by ``bench/dataframes.py`` (docs/DATAFRAMES.md).
"""
from __future__ import annotations

import inspect

import pyarrow as pa

KINDS = ("arrow", "polars", "pandas")

ACCEPTED = ("a pyarrow Table or RecordBatch, an object with __arrow_c_stream__ or "
            "__arrow_c_array__ (Polars or pandas DataFrame, DuckDB relation, nanoarrow), "
            "a RecordBatchReader, or an iterable of RecordBatches")


class NodeOutputError(TypeError):
    """A node returned something that is not tabular Arrow data."""


def check_kind(kind, where: str) -> str:
    """``kind`` if it names a supported library, else a ValueError naming the choices."""
    if kind not in KINDS:
        raise ValueError(f"{where}: inputs_as={kind!r} is not one of {', '.join(map(repr, KINDS))}")
    return kind


def kind_of_annotation(annotation) -> str | None:
    """'polars' / 'pandas' / 'arrow' for a parameter annotation naming such a frame, else None.

    Works on real classes and on string annotations (``from __future__ import
    annotations``) without importing either library.
    """
    if annotation is inspect.Parameter.empty:
        return None
    if isinstance(annotation, str):
        text = annotation.replace(" ", "").strip("\"'")
        for prefix, kind in (("pl.", "polars"), ("polars.", "polars"), ("pd.", "pandas"),
                             ("pandas.", "pandas"), ("pa.", "arrow"), ("pyarrow.", "arrow")):
            if text.startswith(prefix) and text.endswith(("DataFrame", "Table")):
                return kind
        return None
    module = getattr(annotation, "__module__", "") or ""
    name = getattr(annotation, "__name__", "")
    if name == "DataFrame":
        for root in ("polars", "pandas"):
            if module == root or module.startswith(root + "."):
                return root
    if name == "Table" and module.startswith("pyarrow"):
        return "arrow"
    return None


def convert_input(table: pa.Table, kind: str):
    """``table`` as the frame type a node asked for.

    Polars: ``polars.from_arrow(rechunk=False)``, zero-copy for fixed-width
    columns.  pandas: Arrow-backed columns (``pd.ArrowDtype``), which wrap the
    Arrow buffers instead of copying them into NumPy.
    """
    if kind == "arrow":
        return table
    if kind == "polars":
        import polars as pl

        return pl.from_arrow(table, rechunk=False)
    if kind == "pandas":
        import pandas as pd

        return table.to_pandas(types_mapper=pd.ArrowDtype)
    raise ValueError(f"unknown input kind {kind!r}")


def to_table(obj, node_name: str) -> pa.Table:
    """A node's return value as a ``pyarrow.Table``; NodeOutputError if it is not tabular."""
    if isinstance(obj, pa.Table):
        return obj
    if isinstance(obj, pa.RecordBatch):
        return pa.Table.from_batches([obj])
    if isinstance(obj, pa.RecordBatchReader):
        return obj.read_all()
    if hasattr(obj, "__arrow_c_stream__"):
        return pa.table(obj)
    if hasattr(obj, "__arrow_c_array__"):
        return pa.Table.from_batches([pa.record_batch(obj)])
    if _is_batch_iterable(obj):
        return _from_batches(iter(obj), node_name)
    hint = " (a lazy query: return its .collect())" if hasattr(obj, "collect") else ""
    raise NodeOutputError(f"node {node_name!r} returned {_type_name(obj)}{hint}; a node must "
                          f"return {ACCEPTED}")


def _is_batch_iterable(obj) -> bool:
    # Strings, bytes and mappings are iterable but never hold batches.
    return (hasattr(obj, "__iter__") and not isinstance(obj, (str, bytes, bytearray, dict))
            and not hasattr(obj, "keys"))


def _from_batches(it, node_name: str) -> pa.Table:
    batches = []
    for i, b in enumerate(it):
        if isinstance(b, pa.Table):
            batches.extend(b.to_batches())
        elif isinstance(b, pa.RecordBatch):
            batches.append(b)
        elif hasattr(b, "__arrow_c_array__"):
            batches.append(pa.record_batch(b))
        else:
            raise NodeOutputError(
                f"node {node_name!r} returned an iterable whose item {i} is {_type_name(b)}; "
                f"an iterable result must yield pyarrow RecordBatches (or Tables)")
        if batches and batches[-1].schema != batches[0].schema:
            raise NodeOutputError(
                f"node {node_name!r} yielded batches with different schemas:\n"
                f"{batches[0].schema}\nthen (item {i}):\n{batches[-1].schema}")
    if not batches:
        raise NodeOutputError(f"node {node_name!r} returned an iterable that yielded no batches, "
                              "so its schema is unknown; return an empty pyarrow Table instead")
    return pa.Table.from_batches(batches)


def _type_name(obj) -> str:
    t = type(obj)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


_NOT_TABULAR = {"None", "dict", "str", "bytes", "int", "float", "bool"}


def check_return_annotation(annotation, node_name: str) -> None:
    """Reject, when the node is defined, a return annotation that cannot be tabular."""
    if annotation is inspect.Signature.empty:
        return
    name = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    if annotation is None or annotation is type(None) or (
            name in _NOT_TABULAR and (isinstance(annotation, str)
                                      or getattr(annotation, "__module__", "") == "builtins")):
        raise NodeOutputError(f"node {node_name!r} is annotated to return {name or 'None'}; "
                              f"a node must return {ACCEPTED}")
