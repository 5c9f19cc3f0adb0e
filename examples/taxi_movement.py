"""The data-movement-bound demo pipeline (projection, filter, add column,
rename, sort by an indexed key, pass-through).  Its nodes live in
``zerrow_pool.pipeline.demos.taxi_movement``; read that file for the code.

    zerrow demo --rows 2000000          # make the data (once) and compare transports
    zerrow run examples/taxi_movement.py --transport zerrow
"""
from zerrow_pool.pipeline.demos.taxi_movement import build

pipeline = build()
