"""Your own interaction logs: CSV/TSV/Parquet (optionally .gz), any column names, any separator.

`read_files` reads one or more files with the same column mapping (`FileOptions`) into one
`Interactions` table. The rules, all reported back to the caller as notes:

- Columns: user, item (required), time, session and event id (optional). Each role is found
  under its mapped name (`--user-col` ...), else under the standard name (`user_id`, `item_id`,
  `timestamp`, `session_id`, `event_id`), so a `seqrec snapshot` file (user_id, item_id,
  timestamp, event_id) reads beside an offline log whose columns were mapped.
- Separator: `--sep`, else sniffed from the header line among `,` `;` TAB `|`.
- Time: integer or fractional epoch seconds, ISO-8601 strings, or Parquet datetimes/dates.
  Fractional seconds are kept for ordering (events 0.3 s apart stay in order) and stored as
  whole seconds. With no time column, each user's events are in row order.
- Several files: a row of a later file is dropped when an earlier file holds the same event
  (same event id when both files have event ids, else the same user, item and time). Within
  one file only repeated event ids are dropped: identical rows can be real repeats.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from training.data.readers import DatasetError, Interactions

SEPARATORS = (",", ";", "\t", "|")
STANDARD = {"user": "user_id", "item": "item_id", "time": "timestamp", "session": "session_id", "event": "event_id"}
_FLAG = {"user": "--user-col", "item": "--item-col", "time": "--time-col", "session": "--session-col"}
_FLAG["event"] = "--event-col"


@dataclass(frozen=True)
class FileOptions:
    """How to read and filter interaction files. `None` column = the standard name, if present."""

    user_col: str | None = None
    item_col: str | None = None
    time_col: str | None = None
    session_col: str | None = None
    event_col: str | None = None
    sep: str | None = None  # None: sniffed from the header
    # Names for files without a header line (e.g. MovieLens u.data); a file whose first line
    # names user_id and item_id (a `seqrec snapshot` CSV) keeps its header.
    columns: tuple[str, ...] | None = None
    user_core: int = 5  # keep users with >= this many events (iteratively, with item_core)
    item_core: int = 5  # keep items with >= this many events
    min_len: int = 3  # then drop users with fewer events (leave-one-out needs 3)
    items_file: str | None = None  # item text: an id column + text columns
    items_id_col: str | None = None  # default: the item column's name, else item_id
    allow_missing_text: bool = False
    min_text_fraction: float = 0.5  # refuse item text that covers fewer of the catalogue's items

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FileOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if kw.get("columns") is not None:
            kw["columns"] = tuple(kw["columns"])
        return cls(**kw)


@dataclass
class ReadResult:
    inter: Interactions
    notes: list[str] = field(default_factory=list)
    rows_read: int = 0
    duplicates: int = 0


def file_digest(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def recipe_key(paths: Sequence[Path], opts: FileOptions) -> str:
    """Digest of every file's content and every option: the prepared-data cache key."""
    h = hashlib.sha256()
    for p in paths:
        h.update(file_digest(p).encode())
    h.update(json.dumps(opts.to_dict(), sort_keys=True).encode())
    return h.hexdigest()[:12]


def _is_parquet(path: Path) -> bool:
    return path.suffix == ".parquet"


def _header_line(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as fh:  # type: ignore[operator]
            return fh.readline().rstrip("\r\n")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from None


def sniff_separator(path: Path) -> str:
    """The candidate separator that splits the header line into the most fields."""
    header = _header_line(path)
    if not header.strip():
        raise DatasetError(f"{path}:1: empty first line; the file needs a header line naming its columns")
    counts = {s: header.count(s) for s in SEPARATORS}
    best = max(SEPARATORS, key=lambda s: counts[s])  # ties: the order of SEPARATORS (',' first)
    return best if counts[best] else ","


def _read_frame(path: Path, sep: str | None, columns: Sequence[str] | None = None):
    import polars as pl

    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: empty file; it needs a header line and one interaction per line")
    try:
        if _is_parquet(path):
            df = pl.read_parquet(path)
        else:
            sep = sep or sniff_separator(path)
            if columns is not None and {STANDARD["user"], STANDARD["item"]} <= set(_header_line(path).split(sep)):
                columns = None  # `--columns` names headerless files; this one (e.g. a snapshot) has a header
            # Every column as text: ids keep their exact spelling ('007' stays '007'), and
            # timestamps are parsed below with messages that name the line.
            df = pl.read_csv(
                path,
                separator=sep,
                infer_schema=False,
                has_header=columns is None,
                new_columns=list(columns) if columns else None,
            )
    except DatasetError:
        raise
    except Exception as exc:  # polars raises many error types; all mean "can't parse"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = None if _is_parquet(path) else _find_bad_line(path, sep or ",", columns)
        raise DatasetError(
            where or f"{path}: cannot parse as {'Parquet' if _is_parquet(path) else 'CSV'}: {first}"
        ) from None
    return df


def _find_bad_line(path: Path, sep: str, columns: Sequence[str] | None) -> str | None:
    """The first line that is not UTF-8 or has another field count than the header (or None)."""
    import csv

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:  # type: ignore[operator]
        raw = fh.read()
    for lineno, line in enumerate(raw.splitlines(), 1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return (
                f"{path}:{lineno}: not UTF-8 ({line[:60]!r}); convert the file, e.g. "
                f"`iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}`"
            )
    width = len(columns) if columns else None
    rows = csv.reader(raw.decode("utf-8").splitlines(), delimiter=sep)
    for lineno, row in enumerate(rows, 1):
        if not row:
            continue
        if width is None:
            width = len(row)
        elif len(row) != width:
            return (
                f"{path}:{lineno}: {len(row)} fields, the header has {width} ({sep!r}-separated); "
                f"fix that line, or quote values that contain {sep!r}"
            )
    return None


def _pick(path: Path, columns: list[str], role: str, mapped: str | None, required: bool) -> str | None:
    if mapped and mapped in columns:
        return mapped
    std = STANDARD[role]
    if std in columns:
        return std
    if mapped is None and not required:
        return None
    want = mapped or std
    hint = ""
    if len(columns) == 1 and any(s in columns[0] for s in SEPARATORS):
        seps = [repr(s) for s in SEPARATORS if s in columns[0]]
        hint = f"; the header read as one column: pass its separator, e.g. --sep {seps[0]}"
    else:
        free = [c for c in columns if c not in STANDARD.values()] or columns
        hint = f"; name yours with {_FLAG[role]} (e.g. {_FLAG[role]} {free[0]})" if columns else ""
    raise DatasetError(f"{path}: missing {role} column {want!r} (columns: {columns}){hint}")


def _at(path: Path, df, row: int, parquet: bool) -> str:
    """`file:line` for text files (the header is line 1), `file, row N` for Parquet."""
    line = int(df["__line"][row])
    return f"{path}, row {line}" if parquet else f"{path}:{line}"


def _parse_time(path: Path, df, col: str, parquet: bool) -> tuple[np.ndarray, str]:
    """Epoch seconds (int64, or float64 when fractional) and a note on how they were read."""
    import polars as pl

    s = df[col]
    missing = s.is_null() | (s.cast(pl.String).str.strip_chars() == "") if s.dtype == pl.String else s.is_null()
    if s.dtype.is_float():
        missing = missing | s.is_nan()
    if missing.any():
        r = int(np.flatnonzero(missing.to_numpy())[0])
        raise DatasetError(
            f"{_at(path, df, r, parquet)}: missing {col!r} value; fill it in or remove the line "
            f"(or pass --time-col with another column)"
        )
    if s.dtype in (pl.Date,):
        return (s.cast(pl.Int64).to_numpy() * 86400).astype(np.int64), f"{col!r}: dates"
    if isinstance(s.dtype, pl.Datetime):
        us = (
            s.dt.replace_time_zone(None).dt.epoch("us").to_numpy() if s.dtype.time_zone else s.dt.epoch("us").to_numpy()
        )
        return _maybe_fraction(us / 1e6), f"{col!r}: datetimes" + _fraction_note(us / 1e6)
    if s.dtype.is_integer():
        return s.cast(pl.Int64).to_numpy(), f"{col!r}: epoch seconds"
    if s.dtype.is_float():
        return _maybe_fraction(s.to_numpy()), f"{col!r}: epoch seconds" + _fraction_note(s.to_numpy())
    s = s.cast(pl.String).str.strip_chars()
    as_int = s.cast(pl.Int64, strict=False)
    if not as_int.is_null().any():
        return as_int.to_numpy(), f"{col!r}: epoch seconds"
    as_float = s.cast(pl.Float64, strict=False)
    numeric = ~as_float.is_null()
    if numeric.all():
        vals = as_float.to_numpy()
        return _maybe_fraction(vals), f"{col!r}: epoch seconds" + _fraction_note(vals)
    if numeric.mean() >= 0.5:  # a numeric column with a few bad values
        r = int(np.flatnonzero(~numeric.to_numpy())[0])
        raise DatasetError(
            f"{_at(path, df, r, parquet)}: {col!r} is {s[r]!r}, not a number; the column holds epoch "
            f"seconds (e.g. {s[int(np.flatnonzero(numeric.to_numpy())[0])]!r}): fix or remove that line"
        )
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
                f"{_at(path, df, r, parquet)}: {col!r} is {s[r]!r}, not an ISO-8601 time "
                f"(like 2024-01-31T10:00:00Z or 2024-01-31) nor epoch seconds: fix or remove that line"
            )
        vals = np.array(parsed, np.float64)
    else:
        vals = dt.dt.epoch("us").to_numpy() / 1e6  # type: ignore[union-attr]
    return _maybe_fraction(vals), f"{col!r}: ISO-8601 times" + _fraction_note(vals)


def _iso(v: str) -> float | None:
    try:
        d = datetime.fromisoformat(v)
    except ValueError:
        return None
    return (d if d.tzinfo else d.replace(tzinfo=UTC)).timestamp()


def _maybe_fraction(vals: np.ndarray) -> np.ndarray:
    vals = np.asarray(vals, np.float64)
    return vals.astype(np.int64) if np.all(vals == np.floor(vals)) else vals


def _fraction_note(vals: np.ndarray) -> str:
    vals = np.asarray(vals, np.float64)
    if np.all(vals == np.floor(vals)):
        return ""
    return " with fractional seconds (kept for ordering, stored as whole seconds)"


def read_one(path: Path, opts: FileOptions) -> tuple[Any, dict[str, str | None], list[str]]:
    """One file -> a polars frame (user, item, t, session, eid as strings/float) + roles + notes."""
    import polars as pl

    df = _read_frame(path, opts.sep, opts.columns)
    parquet = _is_parquet(path)
    cols = list(df.columns)
    if df.height == 0:
        raise DatasetError(f"{path}: no rows, only the header {cols}; the file needs one interaction per line after it")
    # Line numbers as an editor shows them: the header is line 1 (a headerless file starts at 1).
    headerless = not parquet and opts.columns is not None and list(df.columns) == list(opts.columns)
    df = df.with_row_index("__line", offset=1 if parquet or headerless else 2)
    if not parquet:
        # A blank line reads as a row of nulls: skip it (its line number stays correct for the rest).
        df = df.filter(~pl.all_horizontal([pl.col(c).is_null() for c in cols]))
    session = _pick(path, cols, "session", opts.session_col, opts.session_col is not None)
    user = _pick(path, cols, "user", opts.user_col, session is None)
    item = _pick(path, cols, "item", opts.item_col, True)
    time = _pick(path, cols, "time", opts.time_col, opts.time_col is not None)
    event = _pick(path, cols, "event", opts.event_col, opts.event_col is not None)
    notes: list[str] = []
    for role, c in (("user", user or session), ("item", item)):
        null = df[c].is_null()
        if df[c].dtype == pl.String:
            null = null | (df[c].str.strip_chars() == "")
        if null.any():
            r = int(np.flatnonzero(null.to_numpy())[0])
            raise DatasetError(
                f"{_at(path, df, r, parquet)}: empty {role} id in column {c!r}; fill it in or remove the line"
            )
    out = pl.DataFrame(
        {
            "user": df[user if user else session].cast(pl.String),  # type: ignore[index]
            "item": df[item].cast(pl.String),
        }
    )
    if user is None:
        notes.append(f"{path.name}: no user column: each session ({session!r}) is its own user")
    if time:
        t, how = _parse_time(path, df, time, parquet)
        out = out.with_columns(pl.Series("t", np.asarray(t, np.float64)))
        notes.append(f"{path.name}: time from {how}")
    else:
        out = out.with_columns(pl.lit(None, pl.Float64).alias("t"))
        notes.append(
            f"{path.name}: no time column ({STANDARD['time']!r} absent; map one with --time-col): "
            f"each user's events are in row order"
        )
    out = out.with_columns(
        (df[session].cast(pl.String) if session else pl.Series("session", [None] * df.height, pl.String)).alias(
            "session"
        ),
        # Event ids are scoped by user, as in the event store (an event is user + event id there):
        # two users' "e1" are two events.
        (
            pl.concat_str([out["user"], df[event].cast(pl.String)], separator="\x1f")
            if event
            else pl.Series("eid", [None] * df.height, pl.String)
        ).alias("eid"),
    )
    roles = {"user": user, "item": item, "time": time, "session": session, "event": event}
    return out, roles, notes


def read_files(paths: Sequence[Path], opts: FileOptions = FileOptions()) -> ReadResult:
    """Read, combine and de-duplicate one or more interaction files (see the module docstring)."""
    import polars as pl

    if not paths:
        raise DatasetError("no file given")
    frames: list[Any] = []
    has_eid: list[bool] = []
    notes: list[str] = []
    kinds: list[tuple[Path, bool, bool]] = []
    for p in paths:
        df, roles, n = read_one(Path(p), opts)
        mapped = ", ".join(f"{r}={c!r}" for r, c in roles.items() if c)
        notes.append(f"{Path(p).name}: {df.height} rows; columns {mapped}")
        notes.extend(n)
        frames.append(df)
        has_eid.append(roles["event"] is not None)
        kinds.append((Path(p), roles["time"] is not None, roles["session"] is not None))
    timed = {k[1] for k in kinds}
    if len(timed) > 1:
        with_t = [str(k[0]) for k in kinds if k[1]]
        without = [str(k[0]) for k in kinds if not k[1]]
        raise DatasetError(
            f"{without[0]} has no time column but {with_t[0]} has one: events of files with and without "
            f"times cannot be put in one order; map a time column with --time-col, or prepare them apart"
        )
    rows_read = sum(f.height for f in frames)
    dups = 0
    kept: list[Any] = []
    for k, df in enumerate(frames):
        n0 = df.height
        if has_eid[k]:
            df = df.unique(subset=["eid"], keep="first", maintain_order=True)
        if kept:
            drop = pl.Series([False] * df.height)
            prior_eid = [f for f, e in zip(kept, has_eid[:k], strict=False) if e]
            prior_no = [f for f, e in zip(kept, has_eid[:k], strict=False) if not e]
            if has_eid[k] and prior_eid:
                drop = drop | df["eid"].is_in(pl.concat([f["eid"] for f in prior_eid]).implode())
            # Compare by user + item + time with every earlier file that has no event ids (or all
            # earlier files, when this one has none). Without times nothing can be compared.
            uit_from = prior_no if has_eid[k] else kept
            if uit_from and timed == {True}:
                key = pl.concat_str([df["user"], df["item"], df["t"].cast(pl.String)], separator="\x1f")
                prior = pl.concat(
                    [pl.concat_str([f["user"], f["item"], f["t"].cast(pl.String)], separator="\x1f") for f in uit_from]
                )
                drop = drop | key.is_in(prior.implode())
            df = df.filter(~drop)
        dups += n0 - df.height
        kept.append(df)
    if len(paths) > 1 and timed == {False} and not all(has_eid):
        notes.append("files without times or event ids: duplicates across them cannot be recognised (all rows kept)")
    allf = pl.concat(kept)
    ts = None
    if timed == {True}:
        t = allf["t"].to_numpy()
        ts = t.astype(np.int64) if np.all(t == np.floor(t)) else t
    sessions = allf["session"].to_numpy().astype(object) if any(k[2] for k in kinds) else None
    if sessions is not None and any(s is None for s in sessions):
        missing = [str(k[0]) for k in kinds if not k[2]]
        raise DatasetError(
            f"{missing[0]} has no session column while another file has one; map it with --session-col "
            f"or prepare the files apart"
        )
    inter = Interactions(
        allf["user"].to_numpy().astype(object),
        allf["item"].to_numpy().astype(object),
        ts,
        sessions=sessions,
    )
    return ReadResult(inter, notes, rows_read, dups)


def read_item_text_generic(
    path: Path, id_col: str | None = None, sep: str | None = None, default_ids: tuple[str, ...] = ("item_id",)
) -> dict[str, str]:
    """Items file (CSV/TSV/Parquet, separator sniffed): an id column and text columns.

    An item's text is built as the service builds a new item's text (training/data/items.py,
    `compose_item_text`): the non-empty `title`, `categories`, `brand`, `description` values in
    that order, joined by spaces. A file with none of those columns uses all its other text
    columns, in file order, joined by spaces. `id_col` None: the first of `default_ids` present.
    """
    import polars as pl

    from training.data.items import TEXT_FIELDS

    df = _read_frame(Path(path), sep)
    id_col = id_col or next((c for c in default_ids if c in df.columns), default_ids[0])
    if id_col not in df.columns:
        raise DatasetError(f"{path}: no item id column {id_col!r} (columns: {df.columns}); name it with --items-id-col")
    others = [c for c in df.columns if c != id_col and df[c].dtype == pl.String]
    text_cols = [c for c in TEXT_FIELDS if c in others] or others
    if not text_cols:
        raise DatasetError(f"{path}: no text columns besides {id_col!r} (columns: {df.columns})")
    out: dict[str, str] = {}
    for row in df.select([id_col, *text_cols]).iter_rows():
        parts = [str(v).strip() for v in row[1:] if v is not None and str(v).strip()]
        if row[0] is not None:
            out[str(row[0])] = " ".join(parts)
    return out
