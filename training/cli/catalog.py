"""`seqrec catalog import`: load the shop's catalogue (item attributes and availability) into the
service's Redis, streamed in batches, every batch all or nothing.

A file is read batch by batch (Parquet row slices, CSV and JSONL line by line), each row checked by
the service's own rule (app/serving/filters.py `check_rows`: an item id, attributes of one kind
each), and a batch without a bad row is written as one atomic script, the very script and key
layout POST /catalog/items uses (app/stores/catalog.py: a new version per batch, the kinds of new
attributes; a command of the serve extra, like `seqrec serve`, so it may import the store). A
batch with a bad row is not written; its errors name the row (1-based, data rows) and the field.
Every API process serves a written batch within about SEQREC_CATALOG_POLL_S.

CSV cells are text: a cell of an attribute the catalogue (or an earlier row) types is read as that
kind; otherwise `true`/`false` is a boolean, a number a number, anything else a string. Columns
named with `--list` are lists (cells split on `--list-sep`); an empty cell is no value.
"""

from __future__ import annotations

import csv
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

# The service's modules load when a command runs: `seqrec` of the training image (which holds
# only the bundle contract of app/) must start without them.
ITEM_ID = "item_id"  # app/serving/filters.py: ITEM_ID (tests/app/serving/test_catalog.py checks)


catalog_app = typer.Typer(help="The shop's catalogue: item attributes and availability (docs/shop.md).")

_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def canonical(attrs: dict[str, Any]) -> str:
    """app/serving/catalog.py: canonical."""
    return json.dumps(attrs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------------------------- readers
def _kind_of_name(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    name = path.name.lower().removesuffix(".gz")
    for suffix, kind in ((".parquet", "parquet"), (".jsonl", "jsonl"), (".ndjson", "jsonl"), (".csv", "csv")):
        if name.endswith(suffix):
            return kind
    raise typer.BadParameter(
        f"cannot tell the format of {path.name}: name it .parquet, .csv or .jsonl, or pass --format"
    )


def _open_text(path: Path) -> Any:
    if path.name.lower().endswith(".gz"):
        import gzip

        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def _cell(v: str, kind: str | None, list_sep: str) -> Any:
    """A CSV cell as the value its attribute holds (None: no value)."""
    if v == "":
        return None
    if kind == "list":
        return [p.strip() for p in v.split(list_sep) if p.strip()]
    if kind == "number" or (kind is None and _NUMBER.fullmatch(v)):
        try:
            return float(v) if any(c in v for c in ".eE") else int(v)
        except ValueError:
            return v  # refused by the row check, naming the field
    if kind == "boolean" or (kind is None and v.lower() in ("true", "false")):
        return {"true": True, "false": False, "1": True, "0": False}.get(v.lower(), v)
    return v


def _csv_rows(path: Path, sep: str, kinds: dict[str, str], list_cols: set[str], list_sep: str) -> Iterator[Any]:
    with _open_text(path) as fh:
        for row in csv.DictReader(fh, delimiter=sep):
            out: dict[str, Any] = {}
            for name, v in row.items():
                if name is None:  # more cells than the header has names
                    out["-"] = v
                    continue
                if name == ITEM_ID:
                    out[name] = v if v != "" else None
                    continue
                got = _cell(v if v is not None else "", "list" if name in list_cols else kinds.get(name), list_sep)
                if got is not None:
                    out[name] = got
            yield out


def _jsonl_rows(path: Path) -> Iterator[Any]:
    with _open_text(path) as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                yield "not JSON"  # refused by the row check as "a row is an object"


def _parquet_rows(path: Path, batch: int) -> Iterator[Any]:
    import polars as pl

    frame = pl.scan_parquet(path)
    start = 0
    while True:
        part = frame.slice(start, batch).collect()
        if part.height == 0:
            return
        for row in part.to_dicts():
            yield {k: v for k, v in row.items() if v is not None}
        start += part.height


def _ids_as_text(row: Any) -> Any:
    """Whole-number ids (a Parquet int column, `12` in JSON) as text, the way events store them."""
    if isinstance(row, dict):
        v = row.get(ITEM_ID)
        if isinstance(v, int) and not isinstance(v, bool):
            row[ITEM_ID] = str(v)
    return row


# ---------------------------------------------------------------------------------- writing
def _schema(client: Any, keys: list[str]) -> dict[str, str]:
    raw = client.hgetall(keys[3])
    return {_text(k): _text(v) for k, v in raw.items()}


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _write(client: Any, keys: list[str], rows: list[tuple[str, dict[str, Any]]], kinds: dict[str, str]) -> int:
    """One batch as one script: (id -> record) and the kinds of new attributes; returns its version."""
    args: list[str] = ["*", str(len(kinds))]
    for attr, kind in kinds.items():
        args += [attr, kind]
    for item, rec in {i: canonical(a) for i, a in rows}.items():
        args += [item, rec]
    from app.stores.catalog import WRITE_LUA

    res = client.eval(WRITE_LUA, len(keys), *keys, *args)
    status = _text(res[0])
    if status == "conflict":
        raise _Conflict(_text(res[1]), _text(res[2]))
    return int(res[1])


class _Conflict(Exception):
    def __init__(self, attr: str, held: str) -> None:
        self.attr, self.held = attr, held


@dataclass
class _Import:
    """One import: the batch being read and what happened so far."""

    client: Any
    keys: list[str]
    schema: dict[str, str]  # kinds fixed so far (the catalogue's, then this file's)
    max_errors: int
    check: bool
    chunk: list[Any] = field(default_factory=list)
    rows: int = 0
    stored: int = 0
    batches: int = 0
    refused: int = 0
    version: int | None = None
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    t0: float = field(default_factory=time.perf_counter)

    def flush(self) -> None:
        """Check the batch read; write it (unless checking only) when no row is bad."""
        if not self.chunk:
            return
        first, n = self.rows, len(self.chunk)
        from app.serving.filters import check_rows

        checked = check_rows(self.chunk, self.schema, max(0, self.max_errors - len(self.errors)), first_row=first)
        self.chunk, self.rows, self.batches = [], first + n, self.batches + 1
        if checked.error_count:
            self.error_count += checked.error_count
            self.errors.extend(str(e) for e in checked.errors)
            self.refused += 1
            return
        if not self.check:
            try:
                self.version = _write(self.client, self.keys, checked.rows, dict(checked.kinds))
            except _Conflict as exc:  # another writer fixed the attribute's kind meanwhile
                self.error_count += 1
                if len(self.errors) < self.max_errors:
                    self.errors.append(f"rows {first + 1}-{first + n}: {exc.attr}: is a {exc.held} in the catalogue")
                self.refused += 1
                return
            self.stored += len({i for i, _ in checked.rows})
        self.schema.update(checked.kinds)

    def summary(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "stored": self.stored,
            "batches": self.batches,
            "refused_batches": self.refused,
            "version": self.version,
            "errors": self.errors,
            "error_count": self.error_count,
            "seconds": round(time.perf_counter() - self.t0, 2),
        }


@catalog_app.command("import")
def import_catalog(
    file: Annotated[Path, typer.Argument(help="Items: .parquet, .csv or .jsonl (optionally .gz for CSV/JSONL).")],
    redis_url: Annotated[
        str,
        typer.Option(help="The service's Redis: redis://host:port/db, or redis+cluster://host:port,... for a cluster."),
    ],
    key_prefix: Annotated[str, typer.Option(help="Key prefix the service writes (SEQREC_KEY_PREFIX).")] = "seqrec:",
    batch: Annotated[
        int, typer.Option(min=1, max=10_000, help="Rows per batch; each is written all or nothing.")
    ] = 5000,
    max_errors: Annotated[int, typer.Option(min=1, help="Bad rows reported at most (all are counted).")] = 50,
    file_format: Annotated[
        str, typer.Option("--format", help="auto (by the file name), parquet, csv or jsonl.")
    ] = "auto",
    sep: Annotated[str, typer.Option(help="CSV separator.")] = ",",
    list_col: Annotated[
        list[str] | None, typer.Option("--list", help="A CSV column holding lists (repeat for several).")
    ] = None,
    list_sep: Annotated[str, typer.Option(help="Separator of the entries of a CSV list cell.")] = "|",
    check: Annotated[bool, typer.Option("--check", help="Only check the file: write nothing.")] = False,
) -> None:
    """Load item attributes and availability into the service's Redis: streamed, checked row by row,
    each batch written whole or not at all. Prints a JSON summary; exits 1 when a batch was refused."""
    from training.snapshot import SnapshotError, connect

    fmt = _kind_of_name(file, file_format)
    if fmt not in ("parquet", "csv", "jsonl"):
        raise typer.BadParameter("--format must be auto, parquet, csv or jsonl")
    if not file.is_file():
        typer.echo(f"error: {file} does not exist", err=True)
        raise typer.Exit(2)
    try:
        client = connect(redis_url)
    except SnapshotError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    from app.stores.catalog import keys as catalog_keys

    keys = catalog_keys(key_prefix)
    schema = _schema(client, keys)  # kinds fixed so far: CSV cells are read as those
    if fmt == "csv":
        rows: Iterator[Any] = _csv_rows(file, sep, schema, set(list_col or ()), list_sep)
    elif fmt == "jsonl":
        rows = _jsonl_rows(file)
    else:
        rows = _parquet_rows(file, batch)
    run = _Import(client, keys, schema, max_errors, check)
    try:
        for row in rows:
            run.chunk.append(_ids_as_text(row))
            if len(run.chunk) >= batch:
                run.flush()
        run.flush()
    except Exception as exc:  # an unreadable file or a lost Redis: say which, stop
        typer.echo(f"error: after row {run.rows}: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(run.summary()))
    if run.refused:
        raise typer.Exit(1)
