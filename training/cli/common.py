"""What the commands share: the data options, loading a dataset with a readable error, the
printed report of what reading did, `--set` parsing, and the train flags built from TrainConfig."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Annotated, Any

import typer

DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Folder holding the raw datasets (default: $SEQREC_DATA_DIR, ../shared/data when present, else data/).",
    ),
]
CacheDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir", help="Where prepared datasets are cached (default: $SEQREC_CACHE_DIR or .seqrec_cache)."
    ),
]


FileOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--file",
        help="Your own interaction file(s) (CSV/TSV/Parquet, .gz too) instead of a named dataset; repeat to "
        "combine several (e.g. an offline log and a `seqrec snapshot`), de-duplicated by event id, else by "
        "user + item + time. Columns user_id, item_id and optional timestamp, session_id, event_id: map "
        "other names with `seqrec prepare --file ... --user-col ... --name NAME`, then use --dataset NAME.",
    ),
]
SepOpt = Annotated[
    str | None,
    typer.Option("--sep", help="Field separator of CSV files (default: sniffed from the header: , ; TAB |)."),
]
ColumnsOpt = Annotated[
    str | None,
    typer.Option(
        "--columns", help="Comma-separated column names for files without a header line (e.g. user,item,rating,ts)."
    ),
]
UserColOpt = Annotated[str | None, typer.Option("--user-col", help="User id column (default user_id).")]
ItemColOpt = Annotated[str | None, typer.Option("--item-col", help="Item id column (default item_id).")]
TimeColOpt = Annotated[
    str | None,
    typer.Option(
        "--time-col",
        help="Time column: epoch seconds (or ms/us/ns, see --time-unit; fractions kept for ordering) or ISO-8601 "
        "(default timestamp; without one, each user's events are in row order).",
    ),
]
TimeUnitOpt = Annotated[
    str,
    typer.Option(
        "--time-unit",
        help="Unit of numeric times: s, ms, us, ns, or auto (values above 1e11 are not seconds: ms above 1e11, "
        "us above 1e14, ns above 1e17; the conversion is printed).",
    ),
]
TimeOffsetColOpt = Annotated[
    str | None,
    typer.Option(
        "--time-offset-col",
        help="A column added to --time-col, for a date plus the time within it (e.g. the milliseconds since the "
        "session started); needs --time-offset-unit.",
    ),
]
TimeOffsetUnitOpt = Annotated[
    str | None, typer.Option("--time-offset-unit", help="Unit of --time-offset-col: s, ms, us or ns.")
]
FixIdsOpt = Annotated[
    bool,
    typer.Option(
        "--fix-ids",
        help="Map ids the service would refuse instead of refusing the file: strip whitespace and invisible "
        "characters at both ends, Unicode NFC, percent-encode '/', '%' and control characters (reversible with "
        "urllib.parse.unquote); prints how many ids changed.",
    ),
]
NullUsersOpt = Annotated[
    str,
    typer.Option(
        "--null-users",
        help="Rows whose user id is a placeholder (NA, N/A, null, None, nan, -1, or --null-user-id): warn (keep "
        "them, as one user, and say so), drop (drop the rows), or session (the row's session id stands in for "
        "the user).",
    ),
]
NullUserIdOpt = Annotated[
    list[str] | None,
    typer.Option("--null-user-id", help="Another user id that means 'unknown user' (repeatable, e.g. guest)."),
]
DropDuplicatesOpt = Annotated[
    bool,
    typer.Option(
        "--drop-duplicates",
        help="Drop rows that repeat an earlier row of the same file in every column (default: count them, keep "
        "them as repeat events).",
    ),
]
SessionColOpt = Annotated[
    str | None,
    typer.Option(
        "--session-col",
        help="Session id column (default session_id when present): `train --sessions column` uses it; with no "
        "user column, each session is its own user.",
    ),
]
EventColOpt = Annotated[
    str | None, typer.Option("--event-col", help="Event id column for de-duplication (default event_id when present).")
]
UserCoreOpt = Annotated[
    int, typer.Option("--user-core", help="Keep users with at least this many events (iterated with --item-core).")
]
ItemCoreOpt = Annotated[int, typer.Option("--item-core", help="Keep items with at least this many events.")]
MinLenOpt = Annotated[
    int,
    typer.Option(
        "--min-len", help="Then drop users with fewer events (3: leave-one-out holds out 2; 2 for session data)."
    ),
]
ItemsFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--items-file",
        help="Item text for UniSRec and bundle titles: an id column and text columns (title, categories, brand, "
        "description are composed as the service composes new items; else all text columns).",
    ),
]
ItemsIdColOpt = Annotated[
    str | None,
    typer.Option(
        "--items-id-col", help="Id column of --items-file (default: the --item-col name if there, else item_id)."
    ),
]
AllowMissingTextOpt = Annotated[
    bool,
    typer.Option(
        "--allow-missing-text", help="Accept an items file that covers under half the catalogue (the rest: id as text)."
    ),
]


SinceOpt = Annotated[
    str | None,
    typer.Option(
        "--since",
        help="Keep events at or after this time: an ISO date or datetime (UTC unless it names its zone) or "
        "epoch seconds; needs a time column.",
    ),
]
UntilOpt = Annotated[
    str | None,
    typer.Option("--until", help="Keep events before this time (exclusive): an ISO date or datetime or epoch seconds."),
]


def file_options(sep: str | None, columns: str | None, **fields: Any) -> Any:
    """FileOptions from the reading flags as typed: `--sep '\\t'` means TAB, `--columns a,b,c` a tuple."""
    from training.data import FileOptions

    return FileOptions(
        sep=sep.encode().decode("unicode_escape") if sep else None,
        columns=tuple(c.strip() for c in columns.split(",")) if columns else None,
        **fields,
    )


def fail(msg: str, code: int = 2) -> typing.NoReturn:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def load_data(
    dataset: str,
    file: list[Path] | Path | None,
    data_dir: Path | None,
    cache_dir: Path | None,
    force: bool = False,
    options: Any = None,
    name: str | None = None,
    memory_check: bool = True,
):
    """A named dataset, a name given to `prepare --name`, or interaction file(s) with `options`."""
    from training.data import DatasetError, load_dataset, prepare_files

    try:
        if file:
            files = [file] if isinstance(file, Path) else list(file)
            return prepare_files(files, options, name=name, cache_dir=cache_dir, force=force, memory_check=memory_check)
        return load_dataset(dataset, data_dir, cache_dir, force=force)
    except DatasetError as exc:
        msg = str(exc)
        if file and options is None and "--" in msg:
            # The data options live on `prepare`; the other commands read files with the defaults.
            msg += (
                "; these options are `seqrec prepare` options: prepare --file ... --name NAME, then use --dataset NAME"
            )
        fail(msg)


def print_report(data: Any) -> None:
    """What reading found, what each filter removed and what looks wrong (stderr: stdout stays one JSON line)."""
    for note in data.meta.get("notes", []):
        typer.echo(note, err=True)
    print_steps(data.meta.get("report") or [])
    for warning in data.meta.get("warnings", []):
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)


def print_steps(steps: list[dict[str, Any]]) -> None:
    if not steps:
        return
    cols = [("rows", 22), ("users", 20), ("items", 18)]
    if any("sessions" in st.get("after", {}) for st in steps):
        cols.append(("sessions", 20))
    typer.echo(f"{'step':<32}" + "".join(f"{k:>{w}}" for k, w in cols), err=True)
    for st in steps:
        after, before = st.get("after", {}), st.get("before", {})
        cells = []
        for key, width in cols:
            a, b = after.get(key), before.get(key)
            txt = "" if a is None else (f"{b} -> {a}" if b is not None else str(a))
            cells.append(f"{txt:>{width}}")
        typer.echo(f"{st['step']:<32}{''.join(cells)}", err=True)


def check_eval(data: Any, split: Any, max_users: int | None, minimum: int) -> None:
    """Refuse (exit 2) a split with fewer than `minimum` validation or test queries; print the counts."""
    from training.data import DatasetError, check_eval_queries, leave_one_out
    from training.train import subset_split

    try:
        typer.echo(
            check_eval_queries(subset_split(split or leave_one_out(data), max_users), minimum, data.name), err=True
        )
    except DatasetError as exc:
        fail(str(exc))


def overrides(pairs: list[str] | None) -> dict[str, dict[str, Any]]:
    from training.config import ConfigError, parse_overrides

    try:
        return parse_overrides(pairs or [])
    except ConfigError as exc:
        fail(str(exc))


def train_flag(f: Any, hint: Any) -> inspect.Parameter:
    """A `--name` option for one TrainConfig field: same type, its help, None = not given."""
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    default = f.default
    shown = "none" if default is None else str(default).lower() if isinstance(default, bool) else default
    flag = f"--{f.name.replace('_', '-')}"
    opt = typer.Option(
        flag if base is not bool else f"{flag}/--no-{flag[2:]}",
        help=f"{f.metadata['help']} (train.{f.name}; default {shown}; per model: seqrec options)",
        show_default=False,
    )
    return inspect.Parameter(
        f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[base | None, opt]
    )


def with_train_flags(func: Any) -> Any:
    """Give `func` (which takes **flags) one CLI option per TrainConfig field: the flags are built
    from the dataclass, so a new option, its type and its help are declared once."""
    from dataclasses import fields

    from training.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    sig = inspect.signature(func, eval_str=True)
    own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    taken = {p.name for p in own}
    extra = [train_flag(f, hints[f.name]) for f in fields(TrainConfig) if f.name not in taken]
    func.__signature__ = sig.replace(parameters=[*own, *extra])
    func.__annotations__ = {**{p.name: p.annotation for p in own}, **{p.name: p.annotation for p in extra}}
    return func
