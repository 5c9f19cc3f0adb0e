"""A light scan-and-aggregate pipeline over the demo taxi trips, used to run
several DAGs at once over the same Parquet input (the decode cache's case).

trips (5 columns) -> fares (add column) -> by_zone (group-by) + top_trips (sort/limit)
"""
import pyarrow.compute as pc

from zerrow_pool import demo_data
from zerrow_pool import pipeline as zp

COLUMNS = ["trip_id", "pickup_zone", "fare_amount", "tip_amount", "total_amount"]


@zp.node
def fares(trips):
    return trips.append_column("net", pc.subtract(trips["total_amount"], trips["tip_amount"]))


@zp.node
def by_zone(fares):
    return fares.group_by("pickup_zone").aggregate([("net", "sum"), ("trip_id", "count")]) \
        .sort_by("pickup_zone")


@zp.node
def top_trips(fares):
    return fares.take(pc.select_k_unstable(fares, 100, [("fare_amount", "descending")]))


def build(name: str = "taxi_scan", data_dir: str | None = None) -> zp.Pipeline:
    path = f"{data_dir}/trips" if data_dir else demo_data.trips_path()
    return zp.Pipeline(name, [zp.parquet("trips", path, columns=COLUMNS), fares, by_zone, top_trips])


pipeline = build
