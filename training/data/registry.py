"""Named datasets, their preparation recipe, and the binary cache of prepared data."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.data import readers
from training.data.preprocess import SeqData, build_sequences
from training.data.readers import DatasetError, Interactions

CACHE_VERSION = 1


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    files: tuple[str, ...]  # relative to the data dir; checked before reading
    read: Callable[[Path], Interactions]
    read_text: Callable[[Path], dict[str, str]] | None = None
    k_user: int = 0
    k_item: int = 0
    min_len: int = 3
    extra: dict[str, str] = field(default_factory=dict)


def _ml1m_ratings_file(d: Path) -> Path:
    """The complete GroupLens ratings.dat when downloaded, else the partial copy."""
    full = d / "ml-1m" / "ratings.dat"
    return full if full.is_file() else d / "ml-1m" / "ratings.partial_users_0001-2999.dat"


def _ml1m_sequences(d: Path) -> Interactions:
    """The SASRec file when present; else rebuilt from the official ratings.dat (time order)."""
    sasrec = d / "ml-1m" / "ml-1m.sasrec.txt"
    if sasrec.is_file() or not (d / "ml-1m" / "ratings.dat").is_file():
        return readers.read_sasrec(sasrec)
    return readers.read_movielens_dat(d / "ml-1m" / "ratings.dat")


def _ml1m_text(d: Path) -> dict[str, str]:
    """SASRec ids -> original MovieLens ids -> movies.dat text."""
    titles = readers.read_item_text_movielens(d / "ml-1m" / "movies.dat")
    mapping = d / "ml-1m" / "sas_to_original_items.txt"
    out: dict[str, str] = {}
    with mapping.open() as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if len(parts) != 2:
                raise DatasetError(f"{mapping}:{lineno}: expected 'sas_id original_id'")
            if parts[1] in titles:
                out[parts[0]] = titles[parts[1]]
    return out


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec(
            "ml-1m",
            "MovieLens-1M, the SASRec/BERT4Rec sequential file (order only, 5-core items)",
            (),
            _ml1m_sequences,
            _ml1m_text,
            k_user=5,
            k_item=5,
        ),
        DatasetSpec(
            "ml-1m-ratings",
            "MovieLens-1M original ratings with timestamps (users 1-2999 here), 5-core",
            (),
            lambda d: readers.read_movielens_dat(_ml1m_ratings_file(d)),
            lambda d: readers.read_item_text_movielens(d / "ml-1m" / "movies.dat"),
            k_user=5,
            k_item=5,
        ),
        DatasetSpec(
            "ml-100k",
            "MovieLens-100K with timestamps, 5-core",
            ("ml-100k/u.data",),
            lambda d: readers.read_ml100k(d / "ml-100k" / "u.data"),
            lambda d: readers.read_item_text_ml100k(d / "ml-100k" / "u.item", d / "ml-100k" / "u.genre"),
            k_user=5,
            k_item=5,
        ),
        DatasetSpec(
            "beauty",
            "Amazon Beauty as shipped with BERT4Rec (order only)",
            ("beauty-bert4rec/beauty.txt",),
            lambda d: readers.read_sasrec(d / "beauty-bert4rec" / "beauty.txt"),
        ),
        DatasetSpec(
            "office",
            "Amazon Office Products 5-core (2014), day-resolution timestamps, item text",
            ("amazon-office/train.csv", "amazon-office/dev.csv", "amazon-office/test.csv"),
            lambda d: readers.read_office(d / "amazon-office"),
            lambda d: readers.read_item_text_office(d / "amazon-office"),
        ),
    ]
}


def default_cache_dir() -> Path:
    return Path(os.environ.get("SEQREC_CACHE_DIR", ".seqrec_cache"))


def _cache_path(cache_dir: Path, name: str) -> Path:
    return cache_dir / f"{name}.v{CACHE_VERSION}.npz"


def save_seqdata(data: SeqData, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"name": data.name, "user_ids": data.user_ids, "item_ids": data.item_ids}
    arrays: dict[str, np.ndarray] = {
        "offsets": data.offsets,
        "items": data.items,
        "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
    }
    if data.timestamps is not None:
        arrays["timestamps"] = data.timestamps
    # Write-then-rename so an interrupted prepare never leaves a half cache behind.
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
    os.replace(tmp.name, path)


def load_seqdata(path: Path) -> SeqData:
    with np.load(path) as z:
        meta = json.loads(z["meta"].tobytes().decode())
        return SeqData(
            name=meta["name"],
            user_ids=meta["user_ids"],
            item_ids=meta["item_ids"],
            offsets=z["offsets"],
            items=z["items"],
            timestamps=z.get("timestamps", None),
        )


def resolve_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)} (or pass --file)")
    return DATASETS[name]


def check_files(spec: DatasetSpec, data_dir: Path) -> None:
    missing = [f for f in spec.files if not (data_dir / f).is_file()]
    if missing:
        raise DatasetError(
            f"dataset {spec.name!r}: missing {', '.join(str(data_dir / m) for m in missing)} "
            f"(set --data-dir or SEQREC_DATA_DIR, or fetch it: seqrec download {spec.name})"
        )


def prepare(name: str, data_dir: Path | None = None, cache_dir: Path | None = None, force: bool = False) -> SeqData:
    """Prepared dataset by name, from the cache when it is there."""
    spec = resolve_spec(name)
    data_dir = data_dir or readers.default_data_dir()
    cache_dir = cache_dir or default_cache_dir()
    path = _cache_path(cache_dir, name)
    if path.is_file() and not force:
        return load_seqdata(path)
    if name.startswith("ml-1m") and not (data_dir / "ml-1m").is_dir():
        from training.data.download import download  # the only dataset fetched without asking, as before

        download(name, data_dir)
    check_files(spec, data_dir)
    data = build_sequences(spec.read(data_dir), name, spec.k_user, spec.k_item, spec.min_len)
    save_seqdata(data, path)
    return data


def prepare_file(
    path: Path,
    name: str | None = None,
    cache_dir: Path | None = None,
    k_core: int = 5,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str | None = "timestamp",
    force: bool = False,
) -> SeqData:
    """A generic interactions file (CSV/TSV/Parquet), cached under a name derived from its content."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    name = name or f"{path.stem}-{digest}"
    cache = _cache_path(cache_dir or default_cache_dir(), name)
    if cache.is_file() and not force:
        return load_seqdata(cache)
    inter = readers.read_generic(path, user_col, item_col, time_col)
    data = build_sequences(inter, name, k_core, k_core, 3)
    save_seqdata(data, cache)
    return data


def item_text(name: str, data_dir: Path | None = None) -> dict[str, str]:
    """External item id -> descriptive text, for datasets that have it."""
    spec = resolve_spec(name)
    if spec.read_text is None:
        raise DatasetError(f"dataset {name!r} has no item text")
    return spec.read_text(data_dir or readers.default_data_dir())
