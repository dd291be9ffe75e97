"""`seqrec prepare` and `seqrec download`: raw interactions in, a cached prepared dataset out."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer

from training.cli.common import (
    AllowMissingTextOpt,
    CacheDirOpt,
    ColumnsOpt,
    DataDirOpt,
    DropDuplicatesOpt,
    EventColOpt,
    FileOpt,
    FixIdsOpt,
    ItemColOpt,
    ItemCoreOpt,
    ItemsFileOpt,
    ItemsIdColOpt,
    MinLenOpt,
    NullUserIdOpt,
    NullUsersOpt,
    SepOpt,
    SessionColOpt,
    SinceOpt,
    TimeColOpt,
    TimeOffsetColOpt,
    TimeOffsetUnitOpt,
    TimeUnitOpt,
    UntilOpt,
    UserColOpt,
    UserCoreOpt,
    fail,
    file_options,
    load_data,
    print_report,
)


def _names(csv: str | None) -> tuple[str, ...]:
    return tuple(x.strip() for x in (csv or "").split(",") if x.strip())


def _named_only(dataset: str, file_only: tuple[object, ...], defaults_changed: bool, cores: tuple[int, ...]) -> None:
    """A named dataset has a fixed recipe: the options that only --file takes are refused."""
    if any(file_only) or defaults_changed:
        fail(
            "--name, --items-file and the column and reading options go with --file (named datasets have fixed recipes)"
        )
    if cores != (5, 5, 3):
        fail(f"--user-core/--item-core/--min-len go with --file; {dataset!r} has its published filter")


def _print_prepared(data: Any, from_file: bool, seconds: float) -> None:
    """What each step did, the event types, and the dataset's statistics as one JSON line."""
    from training.event_types import type_summary

    print_report(data)
    if (summary := type_summary(data)) is not None:
        typer.echo(summary, err=True)
    if from_file:
        typer.echo(f"prepared {data.name!r}: use it with --dataset {data.name}", err=True)
    stats = data.stats()
    stats["seconds"] = round(seconds, 2)
    typer.echo(json.dumps(stats))


def prepare(
    dataset: Annotated[
        str, typer.Argument(help="Dataset name: ml-1m, ml-1m-ratings, ml-100k, beauty, office.")
    ] = "ml-1m",
    file: FileOpt = None,
    name: Annotated[
        str | None,
        typer.Option(
            help="Name for --file data: train/evaluate/pretrain then take --dataset NAME (default <file>-<digest>)."
        ),
    ] = None,
    sep: SepOpt = None,
    columns: ColumnsOpt = None,
    user_col: UserColOpt = None,
    item_col: ItemColOpt = None,
    time_col: TimeColOpt = None,
    time_unit: TimeUnitOpt = "auto",
    time_offset_col: TimeOffsetColOpt = None,
    time_offset_unit: TimeOffsetUnitOpt = None,
    session_col: SessionColOpt = None,
    event_col: EventColOpt = None,
    fix_ids: FixIdsOpt = False,
    null_users: NullUsersOpt = "warn",
    null_user_id: NullUserIdOpt = None,
    drop_duplicates: DropDuplicatesOpt = False,
    user_core: UserCoreOpt = 5,
    item_core: ItemCoreOpt = 5,
    min_len: MinLenOpt = 3,
    items_file: ItemsFileOpt = None,
    items_id_col: ItemsIdColOpt = None,
    allow_missing_text: AllowMissingTextOpt = False,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
    type_col: Annotated[
        str | None,
        typer.Option(
            help="Column holding each event's type (view, cart, purchase, dislike, ...); absent: untyped events."
        ),
    ] = None,
    event_types: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated declared types; a row with another type is refused at its line (default: the "
            "types that occur)."
        ),
    ] = None,
    negative_types: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated types never used as input nor target (e.g. dislike); evaluation leaves their "
            "items out of the ranking."
        ),
    ] = None,
    target_types: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated types training predicts and evaluation holds out (default: every type that is "
            "not negative)."
        ),
    ] = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    memory_check: Annotated[
        bool,
        typer.Option(
            help="Before reading, estimate the memory the log needs and refuse one that would not fit; "
            "--no-memory-check reads it anyway."
        ),
    ] = True,
    force: Annotated[bool, typer.Option(help="Rebuild the cache even when it exists.")] = False,
) -> None:
    """Read raw interactions, filter, order by time, remap ids and cache the result; print what each step did."""
    from training.data import DatasetError

    t = time.perf_counter()
    options = None
    if not file:
        reading = (time_offset_col, time_offset_unit, fix_ids, null_user_id, drop_duplicates, since, until)
        typed = (type_col, event_types, negative_types, target_types)
        columns_given = (sep, columns, user_col, item_col, time_col, session_col, event_col)
        _named_only(
            dataset,
            (name, items_file, *columns_given, *reading, *typed),
            (time_unit, null_users) != ("auto", "warn"),
            (user_core, item_core, min_len),
        )
    else:
        options = file_options(
            sep,
            columns,
            user_col=user_col,
            item_col=item_col,
            time_col=time_col,
            session_col=session_col,
            event_col=event_col,
            user_core=user_core,
            item_core=item_core,
            min_len=min_len,
            items_file=str(items_file.resolve()) if items_file else None,
            items_id_col=items_id_col,
            allow_missing_text=allow_missing_text,
            time_unit=time_unit,
            time_offset_col=time_offset_col,
            time_offset_unit=time_offset_unit,
            fix_ids=fix_ids,
            null_users=null_users,
            null_user_ids=tuple(null_user_id or ()),
            drop_duplicates=drop_duplicates,
            since=since,
            until=until,
            type_col=type_col,
            event_types=_names(event_types) if event_types else None,
            negative_types=_names(negative_types),
            target_types=_names(target_types),
        )
        try:
            options.check()
        except DatasetError as exc:
            fail(str(exc))
    data = load_data(
        dataset, file, data_dir, cache_dir, force=force, options=options, name=name, memory_check=memory_check
    )
    _print_prepared(data, bool(file), time.perf_counter() - t)


def download(
    dataset: Annotated[str, typer.Argument(help="Dataset name: ml-1m, ml-1m-ratings, ml-100k, beauty, office.")],
    data_dir: DataDirOpt = None,
    force: Annotated[bool, typer.Option(help="Fetch again even when verified files are there.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar per file.")] = True,
) -> None:
    """Fetch a public dataset into the data dir, verified against pinned checksums (docs/recipes.md)."""
    from training.data import DatasetError
    from training.data.download import download as fetch_dataset
    from training.data.readers import default_data_dir

    target = data_dir or default_data_dir()
    try:
        files = fetch_dataset(dataset, target, progress=progress, force=force)
    except DatasetError as exc:
        fail(str(exc))
    typer.echo(json.dumps({"dataset": dataset, "data_dir": str(target), "files": [str(f) for f in files]}))
