"""Named datasets, their preparation recipe, and the binary cache of prepared data."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.data import readers
from training.data.files import FileOptions, read_files, read_item_text_generic, recipe_key
from training.data.ids import fix_id
from training.data.items import check_text_coverage
from training.data.memory import check_memory
from training.data.preprocess import SeqData, _counts, build_sequences, build_sequences_frame, encode_frame
from training.data.readers import DatasetError, Interactions

CACHE_VERSION = 2  # 2: meta (source, filter report, notes) and session columns


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
    # Typed events: {"negative": [...], "target": [...]} recorded in meta["event_types"].
    event_types: dict[str, list[str]] | None = None


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
            "ml-1m-ratings-typed",
            "MovieLens-1M ratings as typed events: 4-5 like, 3 view, 1-2 dislike (users 1-2999 here), 5-core",
            (),
            lambda d: readers.read_movielens_typed(_ml1m_ratings_file(d)),
            lambda d: readers.read_item_text_movielens(d / "ml-1m" / "movies.dat"),
            k_user=5,
            k_item=5,
            event_types={"negative": ["dislike"], "target": ["like"]},
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


# Prepared data of at least this many events is cached as a folder of .npy files beside the
# .npz name (`<name>.v2/`): loaded memory-mapped, it costs no copy and no decompression.
LARGE_EVENTS = 2_000_000


def _folder_path(cache_dir: Path, name: str) -> Path:
    return cache_dir / f"{name}.v{CACHE_VERSION}"


def _cached(cache_dir: Path, name: str) -> Path | None:
    """The prepared data of `name` in the cache: its folder, else its .npz, else None."""
    folder, npz = _folder_path(cache_dir, name), _cache_path(cache_dir, name)
    return folder if (folder / "meta.json").is_file() else npz if npz.is_file() else None


def _save_cache(data: SeqData, cache_dir: Path, name: str) -> None:
    """Large data as a folder, small as one .npz; the other form, if any, is removed."""
    large = data.num_interactions >= LARGE_EVENTS
    keep, drop = (_folder_path, _cache_path) if large else (_cache_path, _folder_path)
    save_seqdata(data, keep(cache_dir, name))
    stale = drop(cache_dir, name)
    if stale.is_dir():
        shutil.rmtree(stale, ignore_errors=True)
    elif stale.is_file():
        stale.unlink()


def save_seqdata(data: SeqData, path: Path) -> None:
    """`path` ending in .npz: one file; otherwise a folder of uncompressed .npy arrays (see
    save_seqdata_folder). Either is written under a temporary name and renamed when complete."""
    if path.suffix != ".npz":
        save_seqdata_folder(data, path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "name": data.name,
        "user_ids": data.user_ids,
        "item_ids": data.item_ids,
        "session_ids": data.session_ids,
        "meta": data.meta,
    }
    if data.type_names is not None:
        meta["type_names"] = data.type_names
    arrays: dict[str, np.ndarray] = {
        "offsets": data.offsets,
        "items": data.items,
        "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
    }
    if data.timestamps is not None:
        arrays["timestamps"] = data.timestamps
    if data.sessions is not None:
        arrays["sessions"] = data.sessions
    if data.types is not None:
        arrays["types"] = data.types
    # Write-then-rename so an interrupted prepare never leaves a half cache behind.
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
    os.replace(tmp.name, path)


def _arrays(data: SeqData) -> dict[str, np.ndarray]:
    arrays = {"offsets": data.offsets, "items": data.items}
    optional = {"timestamps": data.timestamps, "sessions": data.sessions, "types": data.types}
    return {**arrays, **{k: v for k, v in optional.items() if v is not None}}


def save_seqdata_folder(data: SeqData, path: Path) -> None:
    """The arrays as .npy files (memory-mappable), the ids as one-column Parquet files, the rest
    as meta.json; written to a temporary folder that is renamed over `path` once complete."""
    import polars as pl

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        for key, arr in _arrays(data).items():
            np.save(tmp / f"{key}.npy", np.ascontiguousarray(arr))
        ids = {"user_ids": data.user_ids, "item_ids": data.item_ids, "session_ids": data.session_ids}
        for key, values in ids.items():
            if values is not None:
                pl.DataFrame({"id": values}, schema={"id": pl.String}).write_parquet(tmp / f"{key}.parquet")
        meta = {"name": data.name, "meta": data.meta, "type_names": data.type_names}
        (tmp / "meta.json").write_text(json.dumps(meta))
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_folder(path: Path, mmap: bool) -> SeqData:
    import polars as pl

    meta = json.loads((path / "meta.json").read_text())

    def arr(key: str) -> np.ndarray | None:
        f = path / f"{key}.npy"
        return np.load(f, mmap_mode="r" if mmap else None) if f.is_file() else None

    def ids(key: str) -> list[str] | None:
        f = path / f"{key}.parquet"
        return pl.read_parquet(f)["id"].to_list() if f.is_file() else None

    return SeqData(
        name=meta["name"],
        user_ids=ids("user_ids") or [],
        item_ids=ids("item_ids") or [],
        offsets=arr("offsets"),  # type: ignore[arg-type]
        items=arr("items"),  # type: ignore[arg-type]
        timestamps=arr("timestamps"),
        sessions=arr("sessions"),
        session_ids=ids("session_ids"),
        meta=meta.get("meta") or {},
        types=arr("types"),
        type_names=meta.get("type_names"),
    )


def load_seqdata(path: Path, mmap: bool = True) -> SeqData:
    """Prepared data from an .npz file or a folder (save_seqdata); a folder's arrays are
    memory-mapped read-only unless `mmap` is False."""
    if path.is_dir():
        return _load_folder(path, mmap)
    with np.load(path) as z:
        meta = json.loads(z["meta"].tobytes().decode())
        return SeqData(
            name=meta["name"],
            user_ids=meta["user_ids"],
            item_ids=meta["item_ids"],
            offsets=z["offsets"],
            items=z["items"],
            timestamps=z.get("timestamps", None),
            sessions=z.get("sessions", None),
            session_ids=meta.get("session_ids"),
            meta=meta.get("meta") or {},
            types=z.get("types", None),
            type_names=meta.get("type_names"),
        )


def resolve_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DatasetError(
            f"unknown dataset {name!r}; known: {', '.join(DATASETS)}, or a name given to "
            f"`seqrec prepare --file FILE --name NAME` (or pass --file)"
        )
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
    inter = spec.read(data_dir)
    report: list[dict[str, Any]] = [{"step": "read", "after": _counts(inter.users, inter.items)}]
    data = build_sequences(inter, name, spec.k_user, spec.k_item, spec.min_len, report=report)
    data.meta = {"source": {"kind": "dataset", "name": name}, "report": report, "notes": []}
    if spec.event_types is not None:
        data.meta["event_types"] = spec.event_types
    save_seqdata(data, path)
    return data


def _recipe_path(cache_dir: Path, name: str) -> Path:
    return cache_dir / f"{name}.recipe.json"


def prepare_files(
    paths: Sequence[Path],
    opts: FileOptions | None = None,
    name: str | None = None,
    cache_dir: Path | None = None,
    force: bool = False,
    memory_check: bool = True,
) -> SeqData:
    """One or more interaction files (see training/data/files.py), filtered and cached.

    The cache key is every file's content and every option, so changing either rebuilds. The
    recipe (absolute paths + options) is kept beside the cache under the dataset's name, and
    in `meta["source"]`, so `--dataset NAME` and checkpoints find the data again. Before
    reading, the memory the files need is estimated and a log that would not fit is refused
    (training/data/memory.py; `memory_check=False` reads it anyway).
    """
    opts = opts or FileOptions()
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.is_file():
            raise DatasetError(f"{p}: file not found")
    key = recipe_key(paths, opts)
    name = name or f"{paths[0].name.split('.')[0]}-{key}"
    cache_dir = cache_dir or default_cache_dir()
    cache = _cached(cache_dir, name)
    recipe = {"kind": "files", "files": [str(p.resolve()) for p in paths], "options": opts.to_dict(), "key": key}
    if cache is not None and not force:
        data = load_seqdata(cache)
        if data.meta.get("source", {}).get("key") == key:
            return data
    opts.check()
    if memory_check:
        check_memory(paths)
    res = read_files(paths, opts)
    codes = encode_frame(res.frame)
    counts = codes.counts()
    report: list[dict[str, Any]] = [{"step": "read", "after": {**counts, "rows": res.rows_read}}]
    rows = res.rows_read
    for k, (step, removed) in enumerate(res.steps):
        # Rows removed while reading; the last such step ends at the table that is filtered next.
        last = k == len(res.steps) - 1
        report.append({"step": step, "before": {"rows": rows}, "after": counts if last else {"rows": rows - removed}})
        rows -= removed
    try:
        data = build_sequences_frame(
            res.frame,
            name,
            opts.user_core,
            opts.item_core,
            opts.min_len,
            report=report,
            type_names=res.type_names,
            encoded=codes,
        )
        check_catalogue(data)
    except DatasetError as exc:
        if not res.warnings:
            raise
        # A filter that empties the data is often the effect of what reading warned about.
        raise DatasetError(f"{exc}. Reading the file(s) warned: {' | '.join(res.warnings)}") from None
    data.meta = {"source": recipe, "report": report, "notes": res.notes, "warnings": res.warnings}
    if opts.type_col:
        data.meta["event_types"] = {"negative": list(opts.negative_types), "target": list(opts.target_types)}
    if opts.items_file:
        text = _read_items(opts)
        cov = check_text_coverage(data.item_ids, text, opts.items_file, opts.min_text_fraction, opts.allow_missing_text)
        data.meta["notes"].append(cov.summary(Path(opts.items_file).name))
        if cov.unmatched:
            data.meta["notes"].append(f"items without text, e.g. {', '.join(repr(i) for i in cov.unmatched[:3])}")
    _save_cache(data, cache_dir, name)
    _recipe_path(cache_dir, name).write_text(json.dumps(recipe, indent=2))
    return data


def check_catalogue(data: SeqData) -> None:
    """Refuse prepared data with a single item: every ranking would be that item."""
    if data.num_items < 2:
        raise DatasetError(
            f"{data.name}: one item ({data.item_ids[0]!r}) is left after the filters: there is nothing to rank "
            f"(every recommendation would be that item); keep more items (lower --item-core / --user-core / "
            f"--min-len, widen --since/--until) or check the item column (--item-col)"
        )


def _read_items(opts: FileOptions) -> dict[str, str]:
    """The items file of a recipe; its id column: --items-id-col, else the log's item column name, else item_id."""
    assert opts.items_file
    ids = tuple(dict.fromkeys(c for c in (opts.item_col, "item_id") if c))
    text = read_item_text_generic(Path(opts.items_file), opts.items_id_col, default_ids=ids)
    if opts.fix_ids:  # the log's item ids were mapped: map the items file's alike, so they still match
        text = {fix_id(k): v for k, v in text.items()}
    return text


def prepare_file(
    path: Path,
    name: str | None = None,
    cache_dir: Path | None = None,
    k_core: int = 5,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str | None = None,
    force: bool = False,
    **options: Any,
) -> SeqData:
    """One interactions file: `prepare_files([path], FileOptions(...))` with the classic arguments.

    `k_core` sets both user and item core unless `user_core` / `item_core` are given; every
    other `FileOptions` field may be passed by name. All of them are part of the cache key.
    """
    opts = FileOptions(
        user_col=user_col,
        item_col=item_col,
        time_col=time_col,
        **{"user_core": k_core, "item_core": k_core, **options},
    )
    return prepare_files([path], opts, name, cache_dir, force)


def load_dataset(
    name: str, data_dir: Path | None = None, cache_dir: Path | None = None, force: bool = False
) -> SeqData:
    """A named dataset, or one prepared from files under that name (its recipe in the cache)."""
    if name in DATASETS:
        return prepare(name, data_dir, cache_dir, force)
    recipe = _recipe_path(cache_dir or default_cache_dir(), name)
    if recipe.is_file():
        return data_from_source(json.loads(recipe.read_text()), name, data_dir, cache_dir, force)
    resolve_spec(name)  # raises the "unknown dataset" message
    raise AssertionError


def data_from_source(
    source: dict[str, Any], name: str, data_dir: Path | None = None, cache_dir: Path | None = None, force: bool = False
) -> SeqData:
    if source.get("kind") == "files":
        missing = [f for f in source["files"] if not Path(f).is_file()]
        if missing:
            raise DatasetError(f"dataset {name!r} was prepared from {missing[0]}, which is gone; pass --file")
        return prepare_files(
            [Path(f) for f in source["files"]], FileOptions.from_dict(source["options"]), name, cache_dir, force
        )
    return prepare(source.get("name", name), data_dir, cache_dir, force)


def data_from_meta(meta: dict[str, Any], name: str, data_dir: Path | None = None, cache_dir: Path | None = None):
    """Rebuild the data a checkpoint was trained on from its recorded meta (source + sessions)."""
    from training.data.preprocess import to_sessions

    base_name = name.split("-sessions-")[0] if meta.get("sessions") else name
    if meta.get("source"):
        data = data_from_source(meta["source"], base_name, data_dir, cache_dir)
    else:  # a checkpoint from before data meta was recorded
        data = load_dataset(base_name, data_dir, cache_dir)
    if meta.get("sessions"):
        p = meta["sessions"]
        data = to_sessions(data, p["rule"], p["gap_seconds"], p["max_len"], p["min_len"])
    return data


def item_text(name: str, data_dir: Path | None = None, meta: dict[str, Any] | None = None) -> dict[str, str]:
    """External item id -> descriptive text, for datasets that have it (or an items file in `meta`)."""
    source = (meta or {}).get("source") or {}
    if source.get("kind") == "files":
        opts = FileOptions.from_dict(source["options"])
        if not opts.items_file:
            raise DatasetError(
                f"dataset {name!r} was prepared from {', '.join(Path(f).name for f in source['files'])} "
                f"without item text; prepare it with --items-file ITEMS (an id column + text columns)"
            )
        return _read_items(opts)
    spec = resolve_spec(source.get("name") or name)
    if spec.read_text is None:
        raise DatasetError(f"dataset {name!r} has no item text")
    return spec.read_text(data_dir or readers.default_data_dir())
