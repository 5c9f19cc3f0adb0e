"""Deterministic synthetic taxi-trips dataset for demos, examples and benchmarks.

Layout under ``dataset_dir(rows)``::

    trips/part-000.parquet ...   fact table, ordered by trip_id (and pickup time)
    zones.parquet                265 pickup/dropoff zones with their borough
    vendors.parquet, payments.parquet
    manifest.json                written last: a dataset without it is incomplete

The same ``rows`` always produces the same bytes (each file has its own seed),
so benchmarks are repeatable.  About 80 bytes per row once decoded: the
default 28M rows is ~2.2 GB in memory.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DEFAULT_ROWS = 28_000_000
ROWS_PER_FILE = 2_000_000
ROW_GROUP_ROWS = 500_000
N_ZONES = 265
BOROUGHS = ["Manhattan", "Brooklyn", "Queens", "Bronx", "Staten Island", "EWR"]
EPOCH_US = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z


def data_root() -> str:
    """``$ZERROW_DATA`` or ``~/.cache/zerrow/demo``."""
    return os.environ.get("ZERROW_DATA") or os.path.join(
        os.path.expanduser("~"), ".cache", "zerrow", "demo")


def dataset_dir(rows: int | None = None) -> str:
    """Directory of the dataset with ``rows`` trips (``$ZERROW_DEMO_DIR`` wins when rows is None)."""
    if rows is None and os.environ.get("ZERROW_DEMO_DIR"):
        return os.environ["ZERROW_DEMO_DIR"]
    return os.path.join(data_root(), f"trips-{rows or DEFAULT_ROWS}")


def trips_path(rows: int | None = None) -> str:
    return os.path.join(dataset_dir(rows), "trips")


def table_path(name: str, rows: int | None = None) -> str:
    return os.path.join(dataset_dir(rows), f"{name}.parquet")


def is_complete(directory: str) -> bool:
    return os.path.exists(os.path.join(directory, "manifest.json"))


def zones_table() -> pa.Table:
    rng = np.random.default_rng(265)
    ids = np.arange(1, N_ZONES + 1, dtype=np.int16)
    borough = rng.choice(len(BOROUGHS) - 1, N_ZONES, p=[0.3, 0.25, 0.25, 0.15, 0.05])
    borough[-2] = len(BOROUGHS) - 1  # one airport zone
    return pa.table({
        "zone_id": ids,
        "borough": pa.array([BOROUGHS[b] for b in borough]),
        "zone": pa.array([f"Zone {i:03d}" for i in ids]),
        "service_zone": pa.array(["Yellow Zone" if b == 0 else "Boro Zone" for b in borough]),
    })


def trips_chunk(start: int, n: int, seed: int) -> pa.Table:
    """Rows ``start .. start+n`` of the fact table (deterministic in ``seed``)."""
    rng = np.random.default_rng(seed)
    trip_id = np.arange(start, start + n, dtype=np.int64)
    # ~1 trip per 0.25 s on average, strictly ordered by trip_id
    pickup = EPOCH_US + trip_id * 250_000 + rng.integers(0, 200_000, n)
    minutes = rng.gamma(2.0, 7.0, n)
    dropoff = pickup + (minutes * 60e6).astype(np.int64)
    distance = np.round(rng.gamma(1.8, 1.9, n), 2)
    distance[rng.random(n) < 0.01] = 0.0  # bad rows to filter out
    fare = np.round(3.0 + 2.5 * distance + 0.5 * minutes, 2)
    fare[rng.random(n) < 0.005] *= -1  # refunds / errors
    payment = rng.choice(np.array([1, 2, 3, 4], dtype=np.int8), n, p=[0.7, 0.25, 0.03, 0.02])
    tip = np.where(payment == 1, np.round(fare * rng.uniform(0.0, 0.3, n), 2), 0.0)
    extra = rng.choice(np.array([0.0, 0.5, 1.0, 2.5]), n)
    tolls = np.where(rng.random(n) < 0.05, 6.55, 0.0)
    ts = pa.timestamp("us")
    return pa.table({
        "trip_id": trip_id,
        "vendor_id": rng.integers(1, 3, n, dtype=np.int8),
        "pickup_ts": pa.array(pickup, ts),
        "dropoff_ts": pa.array(dropoff, ts),
        "passenger_count": rng.choice(np.array([1, 1, 1, 2, 2, 3, 4, 5, 6], dtype=np.int8), n),
        "trip_distance": distance,
        "pickup_zone": rng.integers(1, N_ZONES + 1, n, dtype=np.int16),
        "dropoff_zone": rng.integers(1, N_ZONES + 1, n, dtype=np.int16),
        "payment_type": payment,
        "fare_amount": fare,
        "extra": extra,
        "tip_amount": tip,
        "tolls_amount": tolls,
        "total_amount": np.round(fare + extra + tip + tolls, 2),
    })


def generate(rows: int = DEFAULT_ROWS, directory: str | None = None, *, progress=None,
             rows_per_file: int = ROWS_PER_FILE, row_group_rows: int = ROW_GROUP_ROWS) -> str:
    """Write the dataset (if not already complete) and return its directory."""
    directory = directory or dataset_dir(rows)
    if is_complete(directory):
        return directory
    tmp = directory + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "trips"))
    nfiles = max(1, -(-rows // rows_per_file))
    for i in range(nfiles):
        start = i * rows_per_file
        n = min(rows_per_file, rows - start)
        pq.write_table(trips_chunk(start, n, seed=1_000 + i),
                       os.path.join(tmp, "trips", f"part-{i:03d}.parquet"),
                       row_group_size=row_group_rows, compression="snappy")
        if progress:
            progress(i + 1, nfiles)
    pq.write_table(zones_table(), os.path.join(tmp, "zones.parquet"))
    pq.write_table(pa.table({"vendor_id": pa.array([1, 2], pa.int8()),
                             "vendor": ["Creative Mobile", "VeriFone"]}),
                   os.path.join(tmp, "vendors.parquet"))
    pq.write_table(pa.table({"payment_type": pa.array([1, 2, 3, 4], pa.int8()),
                             "payment": ["card", "cash", "no charge", "dispute"]}),
                   os.path.join(tmp, "payments.parquet"))
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
        json.dump({"rows": rows, "files": nfiles, "row_group_rows": row_group_rows}, f)
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(os.path.dirname(directory) or ".", exist_ok=True)
    os.rename(tmp, directory)
    return directory
