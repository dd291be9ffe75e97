"""Readers for the raw interaction formats seqrec knows.

Every reader returns an `Interactions` table: parallel arrays of external user id,
external item id and timestamp, in the order that defines time when timestamps tie
(file order). Errors name the file and line, because a user pointing at the wrong
file should see that, not a traceback.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DatasetError(ValueError):
    """A dataset file is missing or malformed: the message names file and line."""


@dataclass
class Interactions:
    users: np.ndarray  # (n,) str (object) external user ids
    items: np.ndarray  # (n,) str (object) external item ids
    # (n,) epoch seconds: int64, or float64 when fractional (ordering uses the fraction); None:
    # order is file order
    timestamps: np.ndarray | None
    sessions: np.ndarray | None = None  # (n,) str (object) session ids, or None
    # (n,) str (object) event type names (view, like, dislike, ...), or None: untyped events.
    types: np.ndarray | None = None
    type_names: tuple[str, ...] | None = None  # the declared types, in order; None: those that occur

    def __len__(self) -> int:
        return len(self.users)


def _open_lines(path: Path, encoding: str = "utf-8"):
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    return path.open("r", encoding=encoding, newline="")


def read_sasrec(path: Path) -> Interactions:
    """`user item` per line, whitespace separated, each user's lines in time order."""
    users: list[str] = []
    items: list[str] = []
    with _open_lines(path) as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise DatasetError(f"{path}:{lineno}: expected 'user item', got {line.strip()[:80]!r}")
            users.append(parts[0])
            items.append(parts[1])
    if not users:
        raise DatasetError(f"{path}: no interactions found")
    return Interactions(np.array(users, dtype=object), np.array(items, dtype=object), None)


def _read_rating_rows(path: Path, sep: str, encoding: str, skip_header: bool = False) -> Interactions:
    users: list[str] = []
    items: list[str] = []
    ts: list[int] = []
    with _open_lines(path, encoding) as fh:
        for lineno, line in enumerate(fh, 1):
            if skip_header and lineno == 1:
                continue
            line = line.rstrip("\r\n")
            if not line:
                continue
            parts = line.split(sep)
            if len(parts) < 3:
                raise DatasetError(f"{path}:{lineno}: expected user{sep}item{sep}...{sep}timestamp")
            try:
                t = int(parts[3] if len(parts) >= 4 else parts[2])
            except ValueError:
                raise DatasetError(f"{path}:{lineno}: timestamp is not an integer: {line[:80]!r}") from None
            users.append(parts[0])
            items.append(parts[1])
            ts.append(t)
    if not users:
        raise DatasetError(f"{path}: no interactions found")
    return Interactions(np.array(users, dtype=object), np.array(items, dtype=object), np.array(ts, np.int64))


def read_movielens_dat(path: Path) -> Interactions:
    """MovieLens-1M `UserID::MovieID::Rating::Timestamp` (latin-1)."""
    return _read_rating_rows(path, "::", "latin-1")


# MovieLens ratings as typed events: a rating says whether the film was liked, not only watched.
RATING_TYPES = ("view", "like", "dislike")


def rating_type(rating: int) -> str:
    """4-5 stars: like; 1-2: dislike; 3: view (watched, neither liked nor disliked)."""
    return "like" if rating >= 4 else "dislike" if rating <= 2 else "view"


def read_movielens_typed(path: Path) -> Interactions:
    """MovieLens-1M `UserID::MovieID::Rating::Timestamp` with each rating read as an event type (rating_type)."""
    inter = read_movielens_dat(path)
    ratings: list[str] = []
    with _open_lines(path, "latin-1") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                ratings.append(rating_type(int(line.split("::")[2])))
            except (IndexError, ValueError):
                raise DatasetError(f"{path}:{lineno}: rating is not an integer: {line[:80]!r}") from None
    inter.types = np.array(ratings, dtype=object)
    inter.type_names = RATING_TYPES
    return inter


def read_ml100k(path: Path) -> Interactions:
    """MovieLens-100K `u.data`: `user<TAB>item<TAB>rating<TAB>timestamp`."""
    return _read_rating_rows(path, "\t", "latin-1")


def read_office(folder: Path) -> Interactions:
    """Amazon Office 5-core: train.csv + dev.csv + test.csv (TAB, header).

    The dev/test rows are each user's 2nd-last and last interaction; we rebuild the
    full sequence as train rows (time order) + dev + test and let the stable sort
    keep that order on equal (day-resolution) timestamps.
    """
    users: list[str] = []
    items: list[str] = []
    ts: list[int] = []
    for name in ("train.csv", "dev.csv", "test.csv"):
        path = folder / name
        with _open_lines(path) as fh:
            reader = csv.reader(fh, delimiter="\t")
            header = next(reader, None)
            if not header or header[:3] != ["user_id", "item_id", "time"]:
                raise DatasetError(f"{path}:1: expected header 'user_id item_id time', got {header}")
            for lineno, row in enumerate(reader, 2):
                if not row:
                    continue
                try:
                    users.append(row[0])
                    items.append(row[1])
                    ts.append(int(row[2]))
                except (IndexError, ValueError):
                    raise DatasetError(f"{path}:{lineno}: malformed row {row[:3]}") from None
    return Interactions(np.array(users, dtype=object), np.array(items, dtype=object), np.array(ts, np.int64))


# --------------------------------------------------------------------------- item text


def read_item_text_movielens(movies: Path, sep: str = "::") -> dict[str, str]:
    """MovieLens titles + genres: `id::Title (Year)::Genre|Genre` (latin-1)."""
    out: dict[str, str] = {}
    with _open_lines(movies, "latin-1") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.rstrip("\r\n").split(sep)
            if len(parts) < 3:
                raise DatasetError(f"{movies}:{lineno}: expected id{sep}title{sep}genres")
            out[parts[0]] = f"{parts[1]}. Genres: {parts[2].replace('|', ', ')}"
    return out


def read_item_text_ml100k(u_item: Path, u_genre: Path) -> dict[str, str]:
    genres: list[str] = []
    with _open_lines(u_genre, "latin-1") as fh:
        for line in fh:
            if "|" in line:
                genres.append(line.split("|")[0])
    out: dict[str, str] = {}
    with _open_lines(u_item, "latin-1") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.rstrip("\r\n").split("|")
            if len(parts) < 5 + len(genres):
                raise DatasetError(f"{u_item}:{lineno}: expected {5 + len(genres)} '|' fields")
            flags = parts[5 : 5 + len(genres)]
            g = [name for name, f in zip(genres, flags, strict=True) if f == "1"]
            out[parts[0]] = f"{parts[1]}. Genres: {', '.join(g)}"
    return out


def read_item_text_office(folder: Path) -> dict[str, str]:
    """Office.item2index (ASIN -> id) joined with Office.text (ASIN -> text)."""
    asin_to_id: dict[str, str] = {}
    path = folder / "Office.item2index"
    with _open_lines(path) as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) != 2:
                raise DatasetError(f"{path}:{lineno}: expected 'ASIN<TAB>item_id'")
            asin_to_id[parts[0]] = parts[1]
    out: dict[str, str] = {}
    path = folder / "Office.text"
    with _open_lines(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if lineno == 1:
                continue
            parts = line.rstrip("\r\n").split("\t", 1)
            if len(parts) != 2:
                raise DatasetError(f"{path}:{lineno}: expected 'ASIN<TAB>text'")
            if parts[0] in asin_to_id:
                out[asin_to_id[parts[0]]] = parts[1]
    return out


def default_data_dir() -> Path:
    """`$SEQREC_DATA_DIR`, else `../shared/data` when present, else `data/`."""
    env = os.environ.get("SEQREC_DATA_DIR")
    if env:
        return Path(env)
    shared = Path("../shared/data")
    return shared if shared.is_dir() else Path("data")
