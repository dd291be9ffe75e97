"""A synthetic shop log at 1M to 100M events, written in chunks of users (bounded memory).

    python -m benchmarks.scale.generate --size S|M|L|XL --out DIR [--seed 0] [--csv] [--event-ids]

writes DIR/shop-<size>.parquet (columns user_id, item_id, timestamp; event_id with --event-ids),
and DIR/shop-<size>.csv with --csv. The same size and seed give the same file.

The model, chosen so that every stage meets what a real shop log puts in its way:

- Sizes: S = 1M events over 20k items, M = 10M / 200k, L = 30M / 1M, XL = 100M / 5M. Users are
  drawn until the events are spent (on average EVENTS_PER_USER each).
- Item popularity is Zipf-skewed (weight of the r-th most popular item ~ 1 / r^ZIPF_A); which item
  is how popular is a random permutation, so popularity says nothing about an item's neighbours.
- User lengths are heavy-tailed: lognormal (median ~ 10 events, sigma LENGTH_SIGMA), at least
  one event, at most MAX_LEN; a few users hold hundreds of events, most hold a handful.
- A learnable sequential signal: items sit on a ring of "categories" (neighbouring item numbers).
  With probability P_NEXT the next item is a neighbour of the previous one (a step of 1..STEP
  either way on the ring), else a fresh popularity draw. A model that learns the order beats
  a popularity ranking; a model that learns nothing does not.
- Time: every user starts at a uniform moment of a SPAN_DAYS window; events follow at lognormal
  gaps (median ~ 1 minute) with a session break (hours to days) with probability P_BREAK, so each
  user's timestamps (epoch seconds) increase and sessions can be cut by gap.
- Ids as shops write them: users 'u' + nine digits scattered over 0..999,999,936 (so their text
  order is not their order of arrival), items 'sku-' + seven digits.
- Row order: each chunk of users is written sorted by time, as a log is exported, so users'
  events are spread over the chunk and prepare has to sort.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIZES = {"S": (1_000_000, 20_000), "M": (10_000_000, 200_000), "L": (30_000_000, 1_000_000)}
SIZES["XL"] = (100_000_000, 5_000_000)
EVENTS_PER_USER = 25  # the lognormal's mean with the parameters below
LENGTH_MEDIAN = 10
LENGTH_SIGMA = 1.35
MAX_LEN = 5000
ZIPF_A = 1.0
P_NEXT = 0.6
STEP = 3
P_BREAK = 0.12
SPAN_DAYS = 180
START = 1_767_225_600  # 2026-01-01T00:00:00Z
USER_PRIME = 999_999_937  # > any user count: u -> (u * USER_MULT) % USER_PRIME is one-to-one
USER_MULT = 48_271
CHUNK_EVENTS = 4_000_000


@dataclass(frozen=True)
class Shop:
    events: int
    items: int
    seed: int = 0


def _popularity(items: int, rng: np.random.Generator) -> np.ndarray:
    """Cumulative draw probabilities of the items (Zipf over a random permutation of them)."""
    weight = 1.0 / np.arange(1, items + 1, dtype=np.float64) ** ZIPF_A
    p = np.empty(items)
    p[rng.permutation(items)] = weight / weight.sum()
    return np.cumsum(p)


def _lengths(rng: np.random.Generator, n: int) -> np.ndarray:
    raw = rng.lognormal(np.log(LENGTH_MEDIAN), LENGTH_SIGMA, n)
    return np.clip(np.round(raw), 1, MAX_LEN).astype(np.int64)


def _walk(lengths: np.ndarray, cum_pop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Every user's item numbers: a walk on the ring that jumps to a popularity draw at random.

    Vectorised over all events: a segment starts at a user's first event or at a jump; within a
    segment the item is the segment's first item plus the running sum of the steps.
    """
    n, items = int(lengths.sum()), len(cum_pop)
    first = np.zeros(n, bool)
    first[np.r_[0, np.cumsum(lengths)[:-1]]] = True
    starts = first | (rng.random(n) >= P_NEXT)
    step = rng.integers(1, STEP + 1, n) * np.where(rng.random(n) < 0.5, -1, 1)
    step[starts] = 0
    anchor = np.minimum(np.searchsorted(cum_pop, rng.random(int(starts.sum()))), items - 1)
    seg = np.cumsum(starts) - 1
    run = np.cumsum(step)
    run -= run[np.flatnonzero(starts)][seg]  # steps since the segment started
    return (anchor[seg] + run) % items


def _times(lengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = int(lengths.sum())
    gap = np.maximum(1, rng.lognormal(np.log(60), 1.0, n)).astype(np.int64)
    breaks = rng.random(n) < P_BREAK
    gap[breaks] += rng.integers(3 * 3600, 3 * 86400, int(breaks.sum()))
    first = np.r_[0, np.cumsum(lengths)[:-1]]
    gap[first] = rng.integers(0, SPAN_DAYS * 86400, len(lengths))  # each user's start
    t = np.cumsum(gap)
    user_base = np.repeat(t[first] - gap[first], lengths)
    return START + t - user_base


def chunks(shop: Shop):
    """(user numbers, item numbers, timestamps, event numbers) per chunk of users, in order."""
    root = np.random.default_rng(shop.seed)
    cum_pop = _popularity(shop.items, root)
    done, first_user, k = 0, 0, 0
    while done < shop.events:
        rng = np.random.default_rng([shop.seed, k])  # one stream per chunk
        lengths = _lengths(rng, max(1, CHUNK_EVENTS // EVENTS_PER_USER))
        total = np.cumsum(lengths)
        left = shop.events - done
        if total[-1] > left:  # the last chunk: just enough users, the last one cut short
            cut = int(np.searchsorted(total, left))
            lengths = lengths[: cut + 1].copy()
            lengths[-1] -= int(total[cut] - left)
        users = np.repeat(np.arange(first_user, first_user + len(lengths)), lengths)
        items, stamps = _walk(lengths, cum_pop, rng), _times(lengths, rng)
        order = np.argsort(stamps, kind="stable")  # exported by time, not by user
        events = np.arange(done, done + len(users))
        yield users[order], items[order], stamps[order], events
        done += len(users)
        first_user += len(lengths)
        k += 1


def frame(users: np.ndarray, items: np.ndarray, stamps: np.ndarray, events: np.ndarray | None = None):
    """One chunk as the log's columns, ids as strings."""
    import polars as pl

    def ids(prefix: str, numbers: np.ndarray, width: int):
        return pl.concat_str([pl.lit(prefix), pl.lit(pl.Series(numbers)).cast(pl.String).str.zfill(width)])

    scattered = (users.astype(np.int64) * USER_MULT) % USER_PRIME
    cols = [ids("u", scattered, 9).alias("user_id"), ids("sku-", items, 7).alias("item_id")]
    cols.append(pl.lit(pl.Series(stamps, dtype=pl.Int64)).alias("timestamp"))
    if events is not None:
        cols.append(ids("e", events, 1).alias("event_id"))
    return pl.select(cols)


def write(shop: Shop, parquet: Path, csv: Path | None = None, event_ids: bool = False) -> int:
    """Write the log chunk by chunk; returns the rows written.

    Each chunk goes to a part file, then polars streams the parts into one Parquet file (one
    chunk in memory at a time); the CSV is appended chunk by chunk.
    """
    import shutil

    import polars as pl

    parquet.parent.mkdir(parents=True, exist_ok=True)
    parts = parquet.with_name(parquet.name + ".parts")
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir()
    rows = 0
    csv_tmp = csv.with_name(csv.name + ".tmp") if csv else None
    try:
        with csv_tmp.open("wb") if csv_tmp else open(Path("/dev/null"), "wb") as csv_fh:
            for k, (users, items, stamps, events) in enumerate(chunks(shop)):
                df = frame(users, items, stamps, events if event_ids else None)
                df.write_parquet(parts / f"{k:05d}.parquet")
                if csv_tmp:
                    df.write_csv(csv_fh, include_header=rows == 0)
                rows += df.height
        tmp = parquet.with_name(parquet.name + ".tmp")
        pl.scan_parquet(parts / "*.parquet").sink_parquet(tmp, compression="zstd")
        tmp.replace(parquet)  # a half-written log never carries the final name
        if csv and csv_tmp:
            csv_tmp.replace(csv)
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=list(SIZES), required=True)
    ap.add_argument("--out", type=Path, required=True, help="folder for shop-<size>.parquet (and .csv)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--csv", action="store_true", help="also write shop-<size>.csv")
    ap.add_argument("--event-ids", action="store_true", help="add an event_id column")
    a = ap.parse_args(argv)
    events, items = SIZES[a.size]
    t0 = time.perf_counter()
    out = a.out / f"shop-{a.size}.parquet"
    rows = write(Shop(events, items, a.seed), out, a.out / f"shop-{a.size}.csv" if a.csv else None, a.event_ids)
    took = time.perf_counter() - t0
    print(f"{out}: {rows:,} events, {items:,} items in the catalogue, {took:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
