"""Mixed pipeline over the demo taxi trips: filters, a join with the zones
dimension table, and group-by aggregates.

    zerrow run examples/taxi_zones.py --workers 2 --memory-budget 6G
"""
import pyarrow as pa
import pyarrow.compute as pc

from zerrow_pool import demo_data
from zerrow_pool import pipeline as zp

TRIP_COLUMNS = ["trip_id", "pickup_ts", "pickup_zone", "trip_distance", "fare_amount",
                "tip_amount", "total_amount", "payment_type"]


@zp.node
def clean(trips):
    """Drop implausible trips (the positive-fare filter was pushed into the scan)."""
    return trips.filter((pc.field("trip_distance") > 0) & (pc.field("trip_distance") < 100))


@zp.node
def with_borough(clean, zones):
    dim = zones.select(["zone_id", "borough"])
    return clean.join(dim, keys="pickup_zone", right_keys="zone_id", join_type="inner")


@zp.node
def borough_stats(with_borough):
    return (with_borough.group_by("borough")
            .aggregate([("fare_amount", "sum"), ("tip_amount", "mean"), ("trip_id", "count")])
            .sort_by("borough"))


@zp.node
def hourly(clean):
    t = clean.append_column("hour", pc.hour(clean["pickup_ts"]))
    return (t.group_by("hour").aggregate([("total_amount", "mean"), ("trip_id", "count")])
            .sort_by("hour"))


@zp.node
def card_tips(clean):
    card = clean.filter(pc.field("payment_type") == 1)
    card = card.append_column("tip_pct", pc.divide(card["tip_amount"], card["fare_amount"]))
    return (card.group_by("pickup_zone").aggregate([("tip_pct", "mean")])
            .sort_by("pickup_zone"))


def build(name: str = "taxi_zones", data_dir: str | None = None) -> zp.Pipeline:
    trips_dir = f"{data_dir}/trips" if data_dir else demo_data.trips_path()
    zones_file = f"{data_dir}/zones.parquet" if data_dir else demo_data.table_path("zones")
    trips = zp.parquet("trips", trips_dir, columns=TRIP_COLUMNS, filter=pc.field("fare_amount") > 0)
    zones = zp.parquet("zones", zones_file)
    return zp.Pipeline(name, [trips, zones, clean, with_borough, borough_stats, hourly, card_tips])


pipeline = build


if __name__ == "__main__":
    with zp.Runtime(workers=2) as rt:
        print(rt.run(build()).report.format())
