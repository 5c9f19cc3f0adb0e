"""Data-movement-bound pipeline over the demo taxi trips.

projection -> filter -> add column -> rename -> sort by an indexed key ->
pass-through -> summary.  Every step but the filter touches little or no data
itself, so the cost is dominated by how tables move between processes.

    zerrow demo                      # generate data + compare transports
    zerrow run examples/taxi_movement.py --transport copy
"""
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zerrow_pool import demo_data
from zerrow_pool import pipeline as zp

COLUMNS = ["trip_id", "pickup_ts", "dropoff_ts", "pickup_zone", "dropoff_zone", "passenger_count",
           "trip_distance", "fare_amount", "tip_amount", "total_amount", "payment_type"]


@zp.node
def projected(trips):
    """Drop the columns the rest of the pipeline does not need."""
    return trips.select([c for c in trips.column_names if c != "dropoff_zone"])


@zp.node
def valid(projected):
    return projected.filter((pc.field("fare_amount") > 0) & (pc.field("trip_distance") > 0))


@zp.node
def with_speed(valid):
    """Append mph; the input columns are passed on untouched."""
    micros = pc.cast(pc.subtract(valid["dropoff_ts"], valid["pickup_ts"]), pa.int64())
    hours = pc.divide(pc.cast(micros, pa.float64()), 3.6e9)
    return valid.append_column("mph", pc.divide(valid["trip_distance"], hours))


@zp.node
def renamed(with_speed):
    return with_speed.rename_columns([c.replace("_amount", "") for c in with_speed.column_names])


def _is_sorted(col: pa.ChunkedArray) -> bool:
    prev = None
    for chunk in col.chunks:
        if len(chunk) == 0:
            continue
        a = chunk.to_numpy(zero_copy_only=False)
        if (prev is not None and a[0] < prev) or (len(a) > 1 and np.any(a[1:] < a[:-1])):
            return False
        prev = a[-1]
    return True


@zp.node
def ordered(renamed):
    """Order by trip_id; the data is indexed (already ordered) by it, so this
    only checks the order and passes the table on."""
    return renamed if _is_sorted(renamed["trip_id"]) else renamed.sort_by("trip_id")


@zp.node
def passthrough(ordered):
    return ordered


@zp.node
def summary(passthrough):
    t = passthrough
    return pa.table({"trips": [t.num_rows], "fare": [pc.sum(t["fare"]).as_py()],
                     "mean_mph": [pc.mean(t["mph"]).as_py()]})


def build(name: str = "taxi_movement", data_dir: str | None = None) -> zp.Pipeline:
    path = data_dir and f"{data_dir}/trips" or demo_data.trips_path()
    trips = zp.parquet("trips", path, columns=COLUMNS)
    return zp.Pipeline(name, [trips, projected, valid, with_speed, renamed, ordered,
                              passthrough, summary])


pipeline = build


if __name__ == "__main__":
    with zp.Runtime(workers=2) as rt:
        print(rt.run(build()).report.format())
