"""A file shaped like `seqrec snapshot` output, for the offline + live example of docs/your-own-data.md.

    python docs/examples/make_live_snapshot.py ../shared/data/ml-100k/u.data live.parquet

Columns user_id, item_id, timestamp (float epoch seconds), event_id: 300 events that u.data
already holds (same user, item and time, so they are recognised as duplicates) and 1000 later
visits with fractional-second times.
"""

from __future__ import annotations

import sys

import polars as pl


def main(u_data: str, out: str) -> None:
    u = pl.read_csv(
        u_data,
        separator="\t",
        has_header=False,
        new_columns=["user_id", "item_id", "rating", "timestamp"],
        schema_overrides={"user_id": pl.String, "item_id": pl.String},
    )
    resent = u.sort("timestamp").tail(300).with_columns(pl.col("timestamp").cast(pl.Float64))
    later = u.sample(1000, seed=1).with_columns(pl.col("timestamp").cast(pl.Float64) + 10_000_000.25)
    live = pl.concat([resent, later]).select(
        "user_id", "item_id", "timestamp", event_id=pl.format("ev-{}", pl.int_range(pl.len()))
    )
    live.write_parquet(out)
    print(f"wrote {live.height} events to {out}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
