"""The mixed demo pipeline (filters, join with the zones dimension table,
group-by aggregates).  Its nodes live in ``zerrow_pool.pipeline.demos.taxi_zones``.

    zerrow run examples/taxi_zones.py --workers 2 --memory-budget 6G
"""
from zerrow_pool.pipeline.demos.taxi_zones import build

pipeline = build()
