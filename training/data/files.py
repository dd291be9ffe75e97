"""Your own interaction logs: CSV/TSV/Parquet (optionally .gz), any column names, any separator.

`read_files` reads one or more files with the same column mapping (`FileOptions`) into one
`Interactions` table. The rules, all reported back to the caller as notes (what was done) and
warnings (what looks wrong but is not refused):

- Columns: user, item (required), time, session and event id (optional). Each role is found
  under its mapped name (`--user-col` ...), else under the standard name (`user_id`, `item_id`,
  `timestamp`, `session_id`, `event_id`), so a `seqrec snapshot` file (user_id, item_id,
  timestamp, event_id) reads beside an offline log whose columns were mapped.
- Separator: `--sep`, else sniffed from the header line among `,` `;` TAB `|`.
- Ids: every user and item id must pass the service's id rule (`app.ids`), else the file is
  refused at the first such line; `--fix-ids` maps them instead (training/data/ids.py). Placeholder
  user ids (`NA`, `null`, `-1`, ...) are kept with a warning, dropped, or replaced by the session
  (`--null-users`).
- Time: epoch seconds (or ms/us/ns, recognised by size or named), ISO-8601 strings, or Parquet
  datetimes/dates, plus an optional offset column (training/data/times.py). With no time
  column, each user's events are in row order. Ties within a user are measured and warned about.
- Several files: a row of a later file is dropped when an earlier file holds the same event
  (same event id when both files have event ids, else the same user, item and time). Within
  one file only repeated event ids are dropped: identical rows can be real repeats, so they are
  counted, and dropped only with `--drop-duplicates`.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from app.ids import MAX_ID_LENGTH
from training.data.ids import NULL_IDS, NULL_POLICIES, fix_id, id_problem, normalisation_twins, null_like
from training.data.readers import DatasetError, Interactions
from training.data.times import SECONDS_PER, TIE_WARN, TIME_UNITS, Where, add_offset, parse_time, tie_warning

SEPARATORS = (",", ";", "\t", "|")
STANDARD = {"user": "user_id", "item": "item_id", "time": "timestamp", "session": "session_id", "event": "event_id"}
_FLAG = {"user": "--user-col", "item": "--item-col", "time": "--time-col", "session": "--session-col"}
_FLAG["event"] = "--event-col"
# One user holding this share of the rows, and at least DOMINANT_ROWS of them, is warned about:
# in a real log no person does that much; a placeholder for "unknown" does.
DOMINANT_SHARE = 0.05
DOMINANT_ROWS = 1000


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
    time_unit: str = "auto"  # unit of numeric times: auto (by size), s, ms, us or ns
    time_offset_col: str | None = None  # added to the time column (a date + the time within it)
    time_offset_unit: str | None = None  # s, ms, us or ns; required with time_offset_col
    fix_ids: bool = False  # map ids the service refuses (ids.fix_id) instead of refusing the file
    null_users: str = "warn"  # placeholder user ids: warn (one user), drop, or session (the session id)
    null_user_ids: tuple[str, ...] = ()  # more placeholder spellings besides ids.NULL_IDS
    drop_duplicates: bool = False  # drop rows that repeat an earlier row of the same file exactly
    # Keep events from `since` (inclusive) to `until` (exclusive): ISO date/datetime or epoch seconds.
    since: str | None = None
    until: str | None = None
    # Event types (training/event_types.py): the column naming each event's type, the declared
    # types (others are refused; None: whatever occurs), those never used as input nor target
    # (negative) and those training predicts (target; empty: every type that is not negative).
    type_col: str | None = None
    event_types: tuple[str, ...] | None = None
    negative_types: tuple[str, ...] = ()
    target_types: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        # Untyped options keep the dict (and so the cache key) they had before event types existed.
        if not self.type_col:
            for key in _TYPE_KEYS:
                d.pop(key)
        for key in ("since", "until"):  # likewise for logs read without a time cut
            if d[key] is None:
                d.pop(key)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FileOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for key in ("columns", "null_user_ids", "event_types", "negative_types", "target_types"):
            if kw.get(key) is not None:
                kw[key] = tuple(kw[key])
        return cls(**kw)

    def check(self) -> None:
        """Refuse option values that do not go together, naming the flag."""
        units = "|".join(SECONDS_PER)
        if self.time_unit not in TIME_UNITS:
            raise DatasetError(f"--time-unit must be one of {', '.join(TIME_UNITS)}, got {self.time_unit!r}")
        if self.time_offset_col and not self.time_col:
            raise DatasetError("--time-offset-col needs --time-col: the column holding the date the offset counts from")
        if self.time_offset_col and self.time_offset_unit not in SECONDS_PER:
            raise DatasetError(
                f"--time-offset-col {self.time_offset_col} needs its unit: --time-offset-unit {units}"
                + (f" (got {self.time_offset_unit!r})" if self.time_offset_unit else "")
            )
        if self.time_offset_unit and not self.time_offset_col:
            raise DatasetError("--time-offset-unit goes with --time-offset-col (the column holding the offset)")
        if self.null_users not in NULL_POLICIES:
            raise DatasetError(f"--null-users must be one of {', '.join(NULL_POLICIES)}, got {self.null_users!r}")
        lo, hi = self.window()
        if lo >= hi:
            raise DatasetError(f"--since {self.since} is not before --until {self.until}: no event would be kept")
        self._check_types()

    def window(self) -> tuple[float, float]:
        """The --since/--until cut as epoch seconds [since, until); unbounded ends are infinite."""
        lo = time_bound(self.since, "--since") if self.since else -np.inf
        hi = time_bound(self.until, "--until") if self.until else np.inf
        return lo, hi

    def _check_types(self) -> None:
        given = [f"--{k.replace('_', '-')}" for k in _TYPE_KEYS[1:] if getattr(self, k)]
        if given and not self.type_col:
            raise DatasetError(f"{', '.join(given)} need --type-col: the column that holds each event's type")
        both = set(self.negative_types) & set(self.target_types)
        if both:
            raise DatasetError(f"event type(s) {', '.join(sorted(both))} cannot be both negative and target")
        if self.event_types is not None:
            undeclared = [t for t in (*self.negative_types, *self.target_types) if t not in self.event_types]
            if undeclared:
                raise DatasetError(
                    f"event type(s) {', '.join(undeclared)} are not among the declared --event-types "
                    f"({', '.join(self.event_types)})"
                )


_TYPE_KEYS = ("type_col", "event_types", "negative_types", "target_types")


def time_bound(value: str, flag: str) -> float:
    """--since/--until: epoch seconds, or an ISO-8601 date or datetime (UTC when it names no zone)."""
    v = value.strip()
    try:
        return float(v)
    except ValueError:
        pass
    try:
        d = datetime.fromisoformat(v)
    except ValueError:
        raise DatasetError(
            f"{flag} {value!r} is not a time: give an ISO date or datetime (2026-01-31, 2026-01-31T10:00:00Z) "
            f"or epoch seconds"
        ) from None
    return (d if d.tzinfo else d.replace(tzinfo=UTC)).timestamp()


@dataclass
class ReadResult:
    # The events in file order (polars): user, item (strings); t (seconds, float) when the log
    # has times, session when it has sessions, type when it has event types.
    frame: Any
    notes: list[str] = field(default_factory=list)
    rows_read: int = 0
    duplicates: int = 0  # rows dropped as an event an earlier row or file already holds
    warnings: list[str] = field(default_factory=list)
    # Rows removed while reading: (step name, rows removed), in the order the steps ran.
    steps: list[tuple[str, int]] = field(default_factory=list)
    type_names: tuple[str, ...] | None = None  # the declared event types

    @property
    def inter(self) -> Interactions:
        """The events as numpy object arrays (build_sequences' input; slow for large logs)."""
        f = self.frame
        ts = None
        if "t" in f.columns:
            t = f["t"].to_numpy()
            ts = t.astype(np.int64) if np.all(t == np.floor(t)) else t
        return Interactions(
            f["user"].to_numpy().astype(object),
            f["item"].to_numpy().astype(object),
            ts,
            sessions=f["session"].to_numpy().astype(object) if "session" in f.columns else None,
            types=f["type"].to_numpy().astype(object) if "type" in f.columns else None,
            type_names=self.type_names,
        )


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


# What a damaged .gz raises: cut short (EOFError), bad header (BadGzipFile), bad data (zlib.error).
_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def _corrupt_gzip(path: Path, exc: BaseException) -> DatasetError:
    return DatasetError(
        f"{path}: the gzip file is truncated or corrupt ({exc or type(exc).__name__}); "
        f"copy or download it again (`gzip -t {path.name}` checks a copy)"
    )


def _header_line(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as fh:  # type: ignore[operator]
            return fh.readline().rstrip("\r\n")
    except _GZIP_ERRORS as exc:
        raise _corrupt_gzip(path, exc) from None
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
    except _GZIP_ERRORS as exc:
        raise _corrupt_gzip(path, exc) from None
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
    try:
        with opener(path, "rb") as fh:  # type: ignore[operator]
            raw = fh.read()
    except _GZIP_ERRORS as exc:
        raise _corrupt_gzip(path, exc) from None
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


def _where(path: Path, df, parquet: bool) -> Where:
    return lambda row: _at(path, df, row, parquet)


def _pct(n: int, total: int) -> str:
    p = 100 * n / max(1, total)
    return "<1%" if 0 < p < 1 else f"{p:.0f}%"


def _null_mask(s, extra: Sequence[str]):
    """Which values of a string column are placeholder user ids (ids.NULL_IDS, plus `extra`)."""
    spellings = sorted(NULL_IDS | {e.strip().lower() for e in extra})
    return s.is_null() | s.str.strip_chars().str.to_lowercase().is_in(spellings)


def duplicate_rows(df, cols: list[str]) -> tuple[int, int]:
    """(rows equal to another row, rows repeating an earlier one) in the columns `cols`.

    Rows are hashed first: only rows whose hash occurs twice can be equal, and only those are
    compared, so a log without duplicates costs one hash per row, not a comparison of strings.
    """
    import polars as pl

    maybe = df.select(pl.struct(cols).hash()).to_series().is_duplicated()
    if not maybe.any():
        return 0, 0
    some = df.filter(maybe).select(cols)
    return int(some.is_duplicated().sum()), some.height - some.n_unique()


def _drop_repeated_rows(path: Path, df, cols: list[str], drop: bool, notes: list[str], steps: list) -> Any:
    """Count rows that repeat an earlier row of the file in every column; drop them if asked."""
    repeats = duplicate_rows(df, cols)[1]
    if not repeats:
        return df
    if drop:
        steps.append(("exact duplicate rows", repeats))
        notes.append(f"{path.name}: dropped {repeats} rows that repeat an earlier row exactly (--drop-duplicates)")
        return df.unique(subset=cols, keep="first", maintain_order=True)
    notes.append(
        f"{path.name}: {repeats} rows ({_pct(repeats, df.height)}) repeat an earlier row exactly; kept, as "
        f"identical rows can be repeat events (--drop-duplicates drops them)"
    )
    return df


def _placeholder_users(path: Path, df, user: str, session: str | None, opts: FileOptions, at: Where, notes, steps):
    """--null-users drop | session: the rows whose user id stands for "unknown user"."""
    import polars as pl

    s = df[user].cast(pl.String)
    mask = _null_mask(s, opts.null_user_ids)
    n = int(mask.sum())
    if not n:
        return df
    seen = ", ".join(repr(v) for v in s.filter(mask).unique(maintain_order=True).head(3).to_list())
    if opts.null_users == "drop":
        steps.append(("placeholder user ids", n))
        notes.append(f"{path.name}: dropped {n} rows whose user id is a placeholder ({seen}; --null-users drop)")
        return df.filter(~mask)
    if session is None:
        raise DatasetError(
            f"{path}: --null-users session takes the session id in place of a placeholder user id, but this file "
            f"has no session column; name it with --session-col, or use --null-users drop"
        )
    sess = df[session].cast(pl.String)
    empty = (mask & (sess.is_null() | (sess.str.strip_chars() == ""))).to_numpy()
    if empty.any():
        r = int(np.flatnonzero(empty)[0])
        raise DatasetError(f"{at(r)}: placeholder user id and an empty session id; fill one in or remove the line")
    by_session = df.select(pl.concat_str([pl.lit("session:"), sess])).to_series()
    notes.append(
        f"{path.name}: {n} rows with a placeholder user id ({seen}) take their session as user, "
        f"'session:<{session}>' (--null-users session)"
    )
    return df.with_columns(by_session.zip_with(mask, s).alias(user))


def _id_refused(where: str, role: str, col: str, value: str, problem: str, bad: list[str]) -> DatasetError:
    n = len(bad)
    more = f"; {n} {role} ids of this file break it, e.g. {', '.join(repr(v) for v in bad[:3])}" if n > 1 else ""
    msg = (
        f"{where}: {role} id {value!r} (column {col!r}) breaks the service's id rule: {problem}{more}. "
        f"POST /events refuses such ids (422), so a model trained on them would recommend what no client can "
        f"send back"
    )
    if role == "user" and null_like(value):
        msg += (
            f". {value!r} looks like a missing user id: --null-users drop drops such rows, --null-users session "
            f"takes the session id instead"
        )
    return DatasetError(
        f"{msg}. Fix the ids in the file, or pass --fix-ids to map them: whitespace and invisible characters at "
        f"both ends are stripped, and '/', '%' and control characters are percent-encoded "
        f"(docs/your-own-data.md, 'Ids')"
    )


# Ids the rule accepts and --fix-ids leaves as they are: printable ASCII but space and '/' (and '%',
# which --fix-ids encodes), up to the rule's length.
_SAFE_ASCII = rf"^[!-.0-~]{{1,{MAX_ID_LENGTH}}}$"
_FIXED_ASCII = rf"^[!-$&-.0-~]{{1,{MAX_ID_LENGTH}}}$"


def _checked_ids(path: Path, df, col: str, role: str, fix: bool, at: Where, notes: list[str]):
    """The column as ids the service accepts (app.ids): mapped with --fix-ids, else refused at
    the first line that breaks the rule."""
    import polars as pl

    s = df[col].cast(pl.String)
    # Only ids outside plain printable ASCII can break the rule (or change under --fix-ids):
    # Python looks at those alone, in file order, so the first offender is named first.
    uniq = s.filter(~s.str.contains(_FIXED_ASCII if fix else _SAFE_ASCII)).unique(maintain_order=True).to_list()
    if fix:
        mapping = {v: fix_id(v) for v in uniq}
        changed = {k: v for k, v in mapping.items() if k != v}
        if changed:
            n_ids = s.n_unique()
            s = s.replace(changed)
            merged = n_ids - s.n_unique()
            examples = ", ".join(f"{k!r} -> {v!r}" for k, v in list(changed.items())[:2])
            notes.append(
                f"{path.name}: --fix-ids changed {len(changed)} of {n_ids} {role} ids (e.g. {examples})"
                + (f"; {merged} of them now equal another id and are merged with it" if merged else "")
            )
        uniq = list(dict.fromkeys(mapping.values()))
    bad = {v: p for v in uniq if (p := id_problem(v))}
    if not bad:
        return s
    r = int(np.flatnonzero(s.is_in(list(bad)).to_numpy())[0])
    if fix:
        original = df[col].cast(pl.String)[r]
        raise DatasetError(
            f"{at(r)}: {role} id {original!r} is still refused after --fix-ids (as {s[r]!r}: {bad[s[r]]}); "
            f"fix it in the file or remove the line"
        )
    first = s[r]
    others = [first, *(v for v in bad if v != first)]
    raise _id_refused(at(r), role, col, first, bad[first], others)


@dataclass
class _File:
    """One file read: the rows as user, item, t, session, eid; which column had each role; notes."""

    frame: Any
    roles: dict[str, str | None]
    notes: list[str]
    steps: list[tuple[str, int]]


def read_one(path: Path, opts: FileOptions) -> _File:
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
    offset = opts.time_offset_col if time else None
    if offset and offset not in cols:
        raise DatasetError(f"{path}: missing time offset column {offset!r} (columns: {cols}); check --time-offset-col")
    notes: list[str] = []
    steps: list[tuple[str, int]] = []
    df = _drop_repeated_rows(path, df, cols, opts.drop_duplicates, notes, steps)
    if user is not None and opts.null_users != "warn":
        df = _placeholder_users(path, df, user, session, opts, _where(path, df, parquet), notes, steps)
    at = _where(path, df, parquet)
    for role, c in (("user", user or session), ("item", item)):
        null = df[c].is_null()
        if df[c].dtype == pl.String:
            null = null | (df[c].str.strip_chars() == "")
        if null.any():
            r = int(np.flatnonzero(null.to_numpy())[0])
            hint = " (or --null-users drop|session for rows without a user)" if role == "user" and user else ""
            raise DatasetError(f"{at(r)}: empty {role} id in column {c!r}; fill it in or remove the line{hint}")
    out = pl.DataFrame(
        {
            "user": _checked_ids(path, df, user or session, "user", opts.fix_ids, at, notes),  # type: ignore[arg-type]
            "item": _checked_ids(path, df, item, "item", opts.fix_ids, at, notes),
        }
    )
    if user is None:
        notes.append(f"{path.name}: no user column: each session ({session!r}) is its own user")
    if time:
        t, how = parse_time(df[time], time, at, opts.time_unit)
        if offset:
            t, plus = add_offset(t, df[offset], offset, opts.time_offset_unit or "s", at)
            how += f" {plus}"
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
    if opts.type_col:
        out = out.with_columns(_event_types(path, df, opts, at))
    if opts.since or opts.until:
        out = _cut_window(path, out, time, opts, notes, steps)
    roles = {"user": user, "item": item, "time": time, "session": session, "event": event}
    return _File(out, roles, notes, steps)


def _cut_window(path: Path, out, time: str | None, opts: FileOptions, notes: list[str], steps: list):
    """--since/--until: the events from since (inclusive) to until (exclusive)."""
    import polars as pl

    if not time:
        raise DatasetError(
            f"{path}: --since/--until cut the log by event time, but the file has no time column; "
            f"map one with --time-col"
        )
    lo, hi = opts.window()
    kept = out.filter((pl.col("t") >= lo) & (pl.col("t") < hi))
    cut = out.height - kept.height
    if cut:
        steps.append(("outside --since/--until", cut))
        span = " and ".join(f"{f} {v}" for f, v in (("--since", opts.since), ("--until", opts.until)) if v)
        notes.append(f"{path.name}: dropped {cut} rows outside {span}")
    return kept


def _event_types(path: Path, df, opts: FileOptions, at: Where):
    """The type column as stripped strings; an empty or undeclared type is refused at its line."""
    import polars as pl

    col = opts.type_col
    if col not in df.columns:
        raise DatasetError(f"{path}: missing event type column {col!r} (columns: {list(df.columns)}); check --type-col")
    s = df[col].cast(pl.String).str.strip_chars()
    bad = s.is_null() | (s == "")
    if bad.any():
        r = int(np.flatnonzero(bad.to_numpy())[0])
        raise DatasetError(f"{at(r)}: empty event type in column {col!r}; fill it in or remove the line")
    if opts.event_types is not None:
        unknown = ~s.is_in(list(opts.event_types))
        if unknown.any():
            r = int(np.flatnonzero(unknown.to_numpy())[0])
            raise DatasetError(
                f"{at(r)}: event type {s[r]!r} is not declared (--event-types {','.join(opts.event_types)}); "
                f"declare it or remove the line"
            )
    return s.alias("type")


def _user_warnings(users, opts: FileOptions) -> list[str]:
    """Placeholder-looking user ids, and one user holding an implausible share of the rows."""
    total = len(users)
    if not total:
        return []
    out: list[str] = []
    counts = users.value_counts(sort=True)
    nulls = counts.filter(_null_mask(counts[counts.columns[0]], opts.null_user_ids))
    for v, n in nulls.head(3).iter_rows():
        out.append(
            f"user id {v!r} looks like a missing value and holds {n:,} of {total:,} rows ({_pct(n, total)}): they "
            f"all become one user. --null-users drop drops these rows; --null-users session makes each of their "
            f"sessions a user of its own"
        )
    top, n = counts.row(0)
    if n / total > DOMINANT_SHARE and n >= DOMINANT_ROWS and not null_like(top, opts.null_user_ids):
        out.append(
            f"user id {top!r} holds {n:,} of {total:,} rows ({_pct(n, total)}): one user with that share of a log "
            f"is usually a placeholder (a shared guest account, a default value). If it is one, name it: "
            f"--null-user-id {top} with --null-users drop (or session)"
        )
    return out


def _twin_warnings(frame) -> list[str]:
    """Ids written in two Unicode normalisation forms: one id to a reader, two to the service."""
    out = []
    for role in ("user", "item"):
        if (frame[role].str.len_bytes() == frame[role].str.len_chars()).all():
            continue  # distinct ASCII ids stay distinct in every normalisation form
        twins = normalisation_twins(frame[role].unique(maintain_order=True).to_list())
        if twins:
            out.append(
                f"{sum(len(g) for g in twins)} {role} ids differ from another only by their Unicode normalisation "
                f"form (e.g. {' and '.join(ascii(v) for v in twins[0])}): they stay different ids, here and in the "
                f"service; write each id one way, or pass --fix-ids (which puts ids in NFC)"
            )
    return out


def read_files(paths: Sequence[Path], opts: FileOptions = FileOptions()) -> ReadResult:
    """Read, combine and de-duplicate one or more interaction files (see the module docstring)."""
    import polars as pl

    if not paths:
        raise DatasetError("no file given")
    opts.check()
    frames: list[Any] = []
    has_eid: list[bool] = []
    notes: list[str] = []
    removed: dict[str, int] = {}
    kinds: list[tuple[Path, bool, bool]] = []
    with_user: list[bool] = []
    time_col = None
    for p in paths:
        one = read_one(Path(p), opts)
        mapped = ", ".join(f"{r}={c!r}" for r, c in one.roles.items() if c)
        if one.roles["time"] and opts.time_offset_col:
            mapped += f", time offset={opts.time_offset_col!r}"
        notes.append(f"{Path(p).name}: {one.frame.height + sum(k for _, k in one.steps)} rows; columns {mapped}")
        notes.extend(one.notes)
        for step, k in one.steps:
            removed[step] = removed.get(step, 0) + k
        frames.append(one.frame)
        has_eid.append(one.roles["event"] is not None)
        with_user.append(one.roles["user"] is not None)
        kinds.append((Path(p), one.roles["time"] is not None, one.roles["session"] is not None))
        time_col = time_col or one.roles["time"]
    timed = {k[1] for k in kinds}
    if len(timed) > 1:
        with_t = [str(k[0]) for k in kinds if k[1]]
        without = [str(k[0]) for k in kinds if not k[1]]
        raise DatasetError(
            f"{without[0]} has no time column but {with_t[0]} has one: events of files with and without "
            f"times cannot be put in one order; map a time column with --time-col, or prepare them apart"
        )
    rows_read = sum(f.height for f in frames) + sum(removed.values())
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
    if allf.height == 0 and (opts.since or opts.until):
        span = " and ".join(f"{f} {v}" for f, v in (("--since", opts.since), ("--until", opts.until)) if v)
        raise DatasetError(f"no event left to prepare between {span}; check the time cut against the log's times")
    ts = None
    warnings: list[str] = []
    if any(with_user):
        users = pl.concat([f["user"] for f, u in zip(kept, with_user, strict=True) if u])
        warnings += _user_warnings(users, opts)
    warnings += _twin_warnings(allf)
    if timed == {True}:
        t = allf["t"].to_numpy()
        ts = t.astype(np.int64) if np.all(t == np.floor(t)) else t
        tied = duplicate_rows(allf, ["user", "t"])[0]
        share, tie = tied / len(t), None
        if share >= TIE_WARN:  # tie_warning words it (and counts again: rare, and exact)
            share, tie = tie_warning(allf["user"], t, time_col or "time")
        if tie:
            warnings.append(tie)
        elif share:
            notes.append(
                f"ties: {_pct(round(share * len(t)), len(t))} of events share their timestamp with another event "
                f"of the same user (kept in row order)"
            )
    with_sessions = any(k[2] for k in kinds)
    if with_sessions and allf["session"].null_count():
        missing = [str(k[0]) for k in kinds if not k[2]]
        raise DatasetError(
            f"{missing[0]} has no session column while another file has one; map it with --session-col "
            f"or prepare the files apart"
        )
    # The events stay a polars frame: build_sequences_frame turns them into int arrays.
    cols = ["user", "item", *(["t"] if ts is not None else []), *(["session"] if with_sessions else [])]
    frame = allf.select([*cols, *(["type"] if opts.type_col else [])])
    steps = [(name, k) for name, k in removed.items() if k]
    if dups:
        steps.append(("duplicate events", dups))
    return ReadResult(frame, notes, rows_read, dups, warnings, steps, opts.event_types)


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
