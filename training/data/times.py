"""Event times of an interaction file: parsed to epoch seconds, units recognised, ties measured.

A time column holds epoch numbers (seconds, or milliseconds/microseconds/nanoseconds, recognised
by size or named with `--time-unit`), ISO-8601 strings, or Parquet datetimes/dates. A date-only
column can be refined by a second column holding an offset (`--time-offset-col`, e.g. the
milliseconds since the session started). Fractional seconds are kept for ordering.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np

from training.data.readers import DatasetError

SECONDS_PER = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}
UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
TIME_UNITS = ("auto", *SECONDS_PER)
# A number above 1e11 is not epoch seconds (1e11 s is the year 5138): above 1e11 it is read as
# milliseconds (1e11 ms is 1973), above 1e14 as microseconds, above 1e17 as nanoseconds.
_UNIT_ABOVE = (("ns", 1e17), ("us", 1e14), ("ms", 1e11))
# In a column of unit u, a value from 1e9 up to u's threshold would be an event of 1970-1973:
# such a value is a time in a smaller unit (1e9 s is 2001), so the column mixes units.
_PLAUSIBLE_SECONDS = 1e9
DAY = 86400
TIE_WARN = 0.2  # warn when this share of events or more share their timestamp within their user

# `file:line` (or `file, row N`) of a row: given by the reader, which knows the file.
Where = Callable[[int], str]


def epoch_unit(vals: np.ndarray) -> str:
    """The unit a column of epoch numbers is in, judged by its largest value."""
    top = float(np.max(np.abs(vals))) if len(vals) else 0.0
    return next((u for u, above in _UNIT_ABOVE if top > above), "s")


def _as_numbers(s: Any, col: str, at: Where, what: str) -> np.ndarray | None:
    """A polars column as numbers (int64, else float64), or None when it is not numeric. A column
    that is mostly numbers with a few bad values is an error naming the first bad line."""
    import polars as pl

    if s.dtype.is_integer():
        return s.cast(pl.Int64).to_numpy()
    if s.dtype.is_float():
        return s.to_numpy().astype(np.float64)
    if s.dtype != pl.String:
        return None
    s = s.str.strip_chars()
    as_int = s.cast(pl.Int64, strict=False)
    if not as_int.is_null().any():
        return as_int.to_numpy()
    as_float = s.cast(pl.Float64, strict=False)
    numeric = ~as_float.is_null()
    if numeric.all():
        return as_float.to_numpy()
    if numeric.mean() >= 0.5:  # a numeric column with a few bad values
        r = int(np.flatnonzero(~numeric.to_numpy())[0])
        ok = s[int(np.flatnonzero(numeric.to_numpy())[0])]
        raise DatasetError(
            f"{at(r)}: {col!r} is {s[r]!r}, not a number; the column holds {what} (e.g. {ok!r}): "
            f"fix or remove that line"
        )
    return None


def _missing(s: Any) -> np.ndarray:
    import polars as pl

    m = s.is_null()
    if s.dtype == pl.String:
        m = m | (s.str.strip_chars() == "")
    if s.dtype.is_float():
        m = m | s.is_nan()
    return m.to_numpy()


def _span(secs: np.ndarray) -> str:
    """' (2016-05-01 to 2016-06-30)': the dates the times cover, so a wrong unit shows at once."""
    if not len(secs):
        return ""
    try:
        lo, hi = (datetime.fromtimestamp(float(x), UTC) for x in (np.min(secs), np.max(secs)))
    except (ValueError, OverflowError, OSError):  # beyond the years datetime can hold
        return " (beyond the year 9999: check the unit, --time-unit)"
    return f" ({lo:%Y-%m-%d} to {hi:%Y-%m-%d})"


def _from_epochs(vals: np.ndarray, unit: str, col: str, at: Where) -> tuple[np.ndarray, str]:
    """Epoch numbers in `unit` ('auto': by size) -> seconds, and a note on how they were read."""
    u = epoch_unit(vals) if unit == "auto" else unit
    if unit == "auto" and u != "s":
        above = dict(_UNIT_ABOVE)[u]
        mixed = np.flatnonzero((np.abs(vals) >= _PLAUSIBLE_SECONDS) & (np.abs(vals) <= above))
        if len(mixed):
            big = int(np.argmax(np.abs(vals)))
            raise DatasetError(
                f"{at(int(mixed[0]))}: {col!r} is {vals[mixed[0]]}, while {at(big)} holds {vals[big]} (epoch "
                f"{UNIT_NAMES[u]}): the column mixes units; make it one unit, or name it with --time-unit s|ms|us|ns"
            )
    secs = vals / SECONDS_PER[u] if u != "s" else vals
    secs = as_seconds(secs)
    how = f"epoch {UNIT_NAMES[u]}"
    if u != "s":
        how += " (--time-unit)" if unit != "auto" else " (values above 1e11 are not seconds), converted to seconds"
    return secs, f"{col!r}: {how}{_span(secs)}{fraction_note(secs)}"


def parse_time(s: Any, col: str, at: Where, unit: str = "auto") -> tuple[np.ndarray, str]:
    """A time column -> epoch seconds (int64, or float64 when fractional) and a note on how it was read."""
    import polars as pl

    missing = _missing(s)
    if missing.any():
        r = int(np.flatnonzero(missing)[0])
        raise DatasetError(
            f"{at(r)}: missing {col!r} value; fill it in or remove the line (or pass --time-col with another column)"
        )
    if s.dtype == pl.Date:
        secs = (s.cast(pl.Int64).to_numpy() * DAY).astype(np.int64)
        return secs, f"{col!r}: dates{_span(secs)}"
    if isinstance(s.dtype, pl.Datetime):
        us = (s.dt.replace_time_zone(None) if s.dtype.time_zone else s).dt.epoch("us").to_numpy()
        secs = as_seconds(us / 1e6)
        return secs, f"{col!r}: datetimes{_span(secs)}{fraction_note(secs)}"
    vals = _as_numbers(s, col, at, "epoch seconds")
    if vals is not None:
        return _from_epochs(vals, unit, col, at)
    s = s.cast(pl.String).str.strip_chars()
    try:
        dt = s.str.to_datetime(time_zone="UTC", strict=False)
        bad = dt.is_null().to_numpy()
    except Exception:  # polars could not infer one format from the first value
        dt, bad = None, np.ones(len(s), bool)
    if bad.any():
        # Mixed formats, or an unparseable value: the standard library decides per value.
        parsed = [_iso(v) for v in s.to_list()]
        worst = [i for i, v in enumerate(parsed) if v is None]
        if worst:
            r = worst[0]
            raise DatasetError(
                f"{at(r)}: {col!r} is {s[r]!r}, not an ISO-8601 time "
                f"(like 2024-01-31T10:00:00Z or 2024-01-31) nor epoch seconds: fix or remove that line"
            )
        vals = np.array(parsed, np.float64)
    else:
        vals = dt.dt.epoch("us").to_numpy() / 1e6  # type: ignore[union-attr]
    secs = as_seconds(vals)
    return secs, f"{col!r}: ISO-8601 times{_span(secs)}{fraction_note(secs)}"


def add_offset(base: np.ndarray, s: Any, col: str, unit: str, at: Where) -> tuple[np.ndarray, str]:
    """`base` (epoch seconds) + the offset column `s` in `unit`: a date plus, e.g., the milliseconds
    since the session started."""
    missing = _missing(s)
    if missing.any():
        r = int(np.flatnonzero(missing)[0])
        raise DatasetError(f"{at(r)}: missing {col!r} value (the time offset); fill it in or remove the line")
    vals = _as_numbers(s, col, at, f"a time offset in {UNIT_NAMES[unit]}")
    if vals is None:
        raise DatasetError(
            f"{at(0)}: {col!r} is {s[0]!r}, not a number: --time-offset-col names a column of numbers "
            f"(an offset in --time-offset-unit s|ms|us|ns from the time column)"
        )
    secs = as_seconds(np.asarray(base, np.float64) + vals / SECONDS_PER[unit])
    return secs, f"plus {col!r} ({UNIT_NAMES[unit]}){fraction_note(secs)}"


def _iso(v: str) -> float | None:
    try:
        d = datetime.fromisoformat(v)
    except ValueError:
        return None
    return (d if d.tzinfo else d.replace(tzinfo=UTC)).timestamp()


def as_seconds(vals: np.ndarray) -> np.ndarray:
    """int64 when every time is a whole second, else float64 (the fraction orders events)."""
    vals = np.asarray(vals, np.float64)
    return vals.astype(np.int64) if np.all(vals == np.floor(vals)) else vals


def fraction_note(vals: np.ndarray) -> str:
    vals = np.asarray(vals, np.float64)
    if np.all(vals == np.floor(vals)):
        return ""
    return " with fractional seconds (kept for ordering, stored as whole seconds)"


def tie_warning(users: np.ndarray, times: np.ndarray, time_col: str) -> tuple[float, str | None]:
    """The share of events whose timestamp another event of the same user shares, and a warning
    when it is TIE_WARN or more: tied events keep the file's row order, whatever happened."""
    import polars as pl

    if not len(users):
        return 0.0, None
    df = pl.DataFrame({"u": users, "t": np.asarray(times, np.float64)}, schema={"u": pl.String, "t": pl.Float64})
    share = float(df.select(pl.struct("u", "t").is_duplicated().mean()).item())
    if share < TIE_WARN:
        return share, None
    t = np.asarray(times, np.float64)
    dates_only = bool(np.all(t % DAY == 0))
    msg = (
        f"{100 * share:.0f}% of events share their timestamp with another event of the same user"
        f"{f' ({time_col!r} holds dates only)' if dates_only else ''}: tied events stay in the file's row order, "
        f"which may not be the order they happened in"
    )
    if dates_only:
        msg += (
            "; if a column holds the time within the day (e.g. milliseconds since the session started), add it: "
            "--time-offset-col COLUMN --time-offset-unit ms"
        )
    else:
        msg += "; keep each user's rows in event order in the file, or map a finer time column"
    return share, msg
