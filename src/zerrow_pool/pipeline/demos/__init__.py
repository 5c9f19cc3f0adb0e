"""Demo pipelines over the synthetic taxi dataset (``zerrow_pool.demo_data``).

``taxi_scan``: a light scan + aggregate, run several times at once in benchmarks.

``taxi_movement``: data-movement-bound (projection, filter, add column, rename,
sort by an indexed key, pass-through).  ``taxi_zones``: mixed (filters, a join
with a dimension table, group-by aggregates).  Each module has
``build(name=..., data_dir=...)`` returning a ``Pipeline``.
"""
