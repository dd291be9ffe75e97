"""`seqrec`: prepare data, train, evaluate and export models (and, with the serve extra, serve them)."""

from __future__ import annotations

import inspect
import json
import os
import sys
import time
import typing
from pathlib import Path
from typing import Annotated, Any

import typer

from training.catalog_cli import catalog_app

app = typer.Typer(
    name="seqrec",
    help="Sequential recommendation: prepare data, train GRU4Rec/SASRec/BERT4Rec/UniSRec, evaluate, export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(catalog_app, name="catalog")

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


def _fail(msg: str, code: int = 2) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _load_data(
    dataset: str,
    file: list[Path] | Path | None,
    data_dir: Path | None,
    cache_dir: Path | None,
    force: bool = False,
    options: Any = None,
    name: str | None = None,
):
    """A named dataset, a name given to `prepare --name`, or interaction file(s) with `options`."""
    from training.data import DatasetError, load_dataset, prepare_files

    try:
        if file:
            files = [file] if isinstance(file, Path) else list(file)
            return prepare_files(files, options, name=name, cache_dir=cache_dir, force=force)
        return load_dataset(dataset, data_dir, cache_dir, force=force)
    except DatasetError as exc:
        msg = str(exc)
        if file and options is None and "--" in msg:
            # The data options live on `prepare`; the other commands read files with the defaults.
            msg += (
                "; these options are `seqrec prepare` options: prepare --file ... --name NAME, then use --dataset NAME"
            )
        _fail(msg)


def _print_report(data: Any) -> None:
    """What reading found, what each filter removed and what looks wrong (stderr: stdout stays one JSON line)."""
    for note in data.meta.get("notes", []):
        typer.echo(note, err=True)
    _print_steps(data.meta.get("report") or [])
    for warning in data.meta.get("warnings", []):
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)


def _print_steps(steps: list[dict[str, Any]]) -> None:
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


def _check_eval(data: Any, split: Any, max_users: int | None, minimum: int) -> None:
    """Refuse (exit 2) a split with fewer than `minimum` validation or test queries; print the counts."""
    from training.data import DatasetError, check_eval_queries, leave_one_out
    from training.train import subset_split

    try:
        typer.echo(
            check_eval_queries(subset_split(split or leave_one_out(data), max_users), minimum, data.name), err=True
        )
    except DatasetError as exc:
        _fail(str(exc))


def _overrides(pairs: list[str] | None) -> dict[str, dict[str, Any]]:
    from training.config import ConfigError, parse_overrides

    try:
        return parse_overrides(pairs or [])
    except ConfigError as exc:
        _fail(str(exc))
        raise  # unreachable: _fail exits


def _train_flag(f: Any, hint: Any) -> inspect.Parameter:
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


def _with_train_flags(func: Any) -> Any:
    """Give `func` (which takes **flags) one CLI option per TrainConfig field: the flags are built
    from the dataclass, so a new option, its type and its help are declared once."""
    from dataclasses import fields

    from training.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    sig = inspect.signature(func, eval_str=True)
    own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    taken = {p.name for p in own}
    extra = [_train_flag(f, hints[f.name]) for f in fields(TrainConfig) if f.name not in taken]
    func.__signature__ = sig.replace(parameters=[*own, *extra])
    func.__annotations__ = {**{p.name: p.annotation for p in own}, **{p.name: p.annotation for p in extra}}
    return func


@app.command()
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
    force: Annotated[bool, typer.Option(help="Rebuild the cache even when it exists.")] = False,
) -> None:
    """Read raw interactions, filter, order by time, remap ids and cache the result; print what each step did."""
    from training.data import DatasetError, FileOptions

    t = time.perf_counter()
    options = None
    reading = (time_offset_col, time_offset_unit, fix_ids, null_user_id, drop_duplicates)
    if file:
        options = FileOptions(
            user_col=user_col,
            item_col=item_col,
            time_col=time_col,
            session_col=session_col,
            event_col=event_col,
            sep=sep.encode().decode("unicode_escape") if sep else None,  # `--sep '\t'` means TAB
            columns=tuple(c.strip() for c in columns.split(",")) if columns else None,
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
        )
        try:
            options.check()
        except DatasetError as exc:
            _fail(str(exc))
    elif (
        name
        or items_file
        or any((sep, columns, user_col, item_col, time_col, session_col, event_col, *reading))
        or (time_unit, null_users) != ("auto", "warn")
    ):
        _fail(
            "--name, --items-file and the column and reading options go with --file (named datasets have fixed recipes)"
        )
    elif (user_core, item_core, min_len) != (5, 5, 3):
        _fail(f"--user-core/--item-core/--min-len go with --file; {dataset!r} has its published filter")
    data = _load_data(dataset, file, data_dir, cache_dir, force=force, options=options, name=name)
    _print_report(data)
    if file:
        typer.echo(f"prepared {data.name!r}: use it with --dataset {data.name}", err=True)
    stats = data.stats()
    stats["seconds"] = round(time.perf_counter() - t, 2)
    typer.echo(json.dumps(stats))


@app.command()
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
        _fail(str(exc))
    typer.echo(json.dumps({"dataset": dataset, "data_dir": str(target), "files": [str(f) for f in files]}))


@app.command()
@_with_train_flags
def train(
    recipe: Annotated[
        Path | None,
        typer.Option(help="A recipe file (recipes/*.toml): its model (with name), train and task tables, its dataset."),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override one option: TABLE.KEY=VALUE with TABLE model, train or task (e.g. --set train.lr=0.002 "
            "--set model.num_layers=4 --set task.mask_prob=0.3); repeatable; wins over the recipe and the flags. "
            "`seqrec options` lists every key.",
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model: sasrec, bert4rec, gru4rec, unisrec (default: the recipe's, else sasrec).")
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="Named dataset, or a name given to `seqrec prepare --file ... --name NAME` "
            "(default: the recipe's, else ml-1m)."
        ),
    ] = None,
    file: FileOpt = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/<model>-<dataset>-<time>).")] = None,
    max_len: Annotated[int | None, typer.Option(help="model.max_len: the history length the model reads.")] = None,
    dim: Annotated[int | None, typer.Option(help="model.dim: hidden size / embedding dimension.")] = None,
    num_layers: Annotated[int | None, typer.Option(help="model.num_layers: transformer blocks / GRU layers.")] = None,
    dropout: Annotated[float | None, typer.Option(help="model.dropout: dropout rate.")] = None,
    sessions: Annotated[
        str | None,
        typer.Option(
            help="Train and evaluate next-item-in-session instead of leave-one-out: sessions from the "
            "data's session column (column), or cut from each user's timeline by time gap (gap) or at "
            "the largest gaps (largest-gap); the newest "
            "sessions are the test set, every event after the first a query, seen items not excluded. "
            "user-gap: sessions cut by time gap, each user's last session is the test set (the one before it "
            "validation), every event after its first a query given all earlier sessions (models with a user "
            "state, e.g. hrnn)."
        ),
    ] = None,
    session_history: Annotated[
        str,
        typer.Option(
            help="--sessions user-gap: the history of a query is all of the user's earlier events (user) or the "
            "current session only (session: a session-only model's view of the same queries)."
        ),
    ] = "user",
    session_gap: Annotated[int, typer.Option(help="Seconds of inactivity that end a session (--sessions gap).")] = 1800,
    session_test_frac: Annotated[float, typer.Option(help="Newest fraction of sessions held out for test.")] = 0.1,
    min_eval_queries: Annotated[
        int, typer.Option(help="Refuse to train when validation or test has fewer queries (0: allow any).")
    ] = 10,
    init: Annotated[
        Path | None,
        typer.Option(
            help="Warm start from a previous bundle directory or best.pt (any model: item rows matched by id, "
            "new items at the mean row, the source's architecture unless overridden); task.init: UniSRec also "
            "takes a `seqrec pretrain` checkpoint (adaptor + transformer)."
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
    progress: Annotated[bool | None, typer.Option(help="Show progress bars (default: only on a terminal).")] = None,
    **flags: Any,
) -> None:
    """Train a model with early stopping on validation NDCG@10; writes checkpoint, metrics and a learning curve.

    Options come, lowest first, from the model's defaults, the --recipe file, the flags, then --set.
    """
    from training.config import ConfigError, Recipe, merge_tables, split_model_table
    from training.train import train as run_train
    from training.zoo import resolve

    layers: list[dict[str, dict[str, Any]]] = []
    rec = None
    if recipe is not None:
        try:
            rec = Recipe.load(recipe)
        except ConfigError as exc:
            _fail(str(exc))
        layers.append(rec.tables)
    warm_from = None
    if init is not None:
        from training.warm_start import WarmStartError, is_warm_start_source, load_source

        if is_warm_start_source(init):
            # A bundle or checkpoint to warm-start from: its architecture (and kind) unless overridden.
            warm_from = init
            try:
                src = load_source(init)
            except WarmStartError as exc:
                _fail(str(exc))
            cfg = {k: v for k, v in src.model_config.items() if k != "num_items"}
            layers.append({"model": {"name": src.kind, **cfg}, "train": {}, "task": {}})
        elif not init.exists():
            _fail(f"{init}: not found (neither a bundle directory nor a checkpoint file)")
    flag_model = {"max_len": max_len, "dim": dim, "num_layers": num_layers, "dropout": dropout}
    layers.append(
        {
            "model": {k: v for k, v in flag_model.items() if v is not None} | ({"name": model} if model else {}),
            "train": {k: v for k, v in flags.items() if v is not None},
            "task": {"init": str(init)} if init is not None and warm_from is None else {},
        }
    )
    layers.append(_overrides(set_))
    tables = merge_tables(*layers)
    name, model_over = split_model_table(tables["model"])
    name = name or "sasrec"
    try:
        model_over, tc, task_cfg = resolve(name, model_over, tables["train"], tables["task"])
    except ConfigError as exc:
        _fail(str(exc))
    init_path = getattr(task_cfg, "init", None)
    if init_path is not None and not Path(init_path).is_file():
        _fail(f"{init_path}: pre-trained checkpoint not found")
    if file is None and dataset is None and rec is not None and rec.file:
        file = Path(rec.file)
    dataset = dataset or (rec.dataset if rec is not None else None) or "ml-1m"
    data = _load_data(dataset, file, data_dir, cache_dir)
    if file:
        _print_report(data)  # read here, not by `prepare`: say what reading found and removed
    split = None
    if sessions is not None:
        from training.data import DatasetError
        from training.hrnn import HISTORIES, user_session_protocol
        from training.sessions import session_protocol

        if sessions not in ("column", "gap", "largest-gap", "user-gap"):
            _fail("--sessions must be column, gap, largest-gap or user-gap")
        if session_history not in HISTORIES:
            _fail(f"--session-history must be one of {', '.join(HISTORIES)}")
        try:
            if sessions == "user-gap":
                data, split = user_session_protocol(data, session_gap, session_history)
            else:
                data, split = session_protocol(data, sessions, session_gap, session_test_frac)
        except DatasetError as exc:
            _fail(str(exc))
    _check_eval(data, split, tc.max_users, min_eval_queries)
    run_dir = out or Path("runs") / f"{name}-{data.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        result = run_train(
            name,
            data,
            run_dir,
            model_over,
            tc.to_dict(),
            progress=progress,
            split=split,
            exclude_history=split is None,
            task_overrides=task_cfg.to_dict(),
            init=warm_from,
        )
    except ValueError as exc:
        _fail(str(exc))
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun only rank 0 evaluates and reports
    typer.echo(
        json.dumps(
            {
                "run_dir": str(result.run_dir),
                "best_epoch": result.best_epoch,
                "stop_reason": result.stop_reason,
                "seconds": round(result.seconds, 1),
                "valid_ndcg@10": result.valid.get("ndcg@10"),
                "valid_hr@10": result.valid.get("hr@10"),
                "test_ndcg@10": result.test.get("ndcg@10"),
                "test_hr@10": result.test.get("hr@10"),
                **(
                    {"test_hr@20": result.test.get("hr@20"), "test_mrr@20": result.test.get("mrr@20")}
                    if split is not None
                    else {}
                ),
            }
        )
    )


@app.command()
def options(
    model: Annotated[str | None, typer.Option(help="Show this model's defaults (default: every model).")] = None,
    markdown: Annotated[bool, typer.Option(help="Print Markdown tables (as in docs/recipes.md).")] = False,
) -> None:
    """Every option a recipe or --set can name: \\[model], \\[train] and \\[task] keys, types, defaults, help."""
    from training.options_doc import options_markdown, options_text

    try:
        typer.echo(options_markdown(model) if markdown else options_text(model))
    except ValueError as exc:
        _fail(str(exc))


@app.command()
def pretrain(
    datasets: Annotated[
        str,
        typer.Option(
            help="Comma-separated datasets with item text, pre-trained on together: named ones, or names given "
            "to `seqrec prepare --file ... --items-file ... --name NAME` ('' for --file only)."
        ),
    ] = "ml-1m,ml-100k",
    file: Annotated[
        list[Path] | None,
        typer.Option(help="Interaction file(s) as one more domain (needs --items-file; columns auto-detected)."),
    ] = None,
    items_file: ItemsFileOpt = None,
    items_id_col: ItemsIdColOpt = None,
    out: Annotated[Path, typer.Option(help="Output folder (receives pretrained.pt and metrics).")] = Path(
        "runs/unisrec-pretrain"
    ),
    epochs: Annotated[int, typer.Option(help="Passes over all domains' training sequences.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Sequences per batch (= in-batch negatives + 1).")] = 256,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-3,
    lam: Annotated[float, typer.Option(help="Weight of the sequence-sequence contrastive loss.")] = 1e-3,
    item_drop: Annotated[float, typer.Option(help="Item-drop probability of the augmented view.")] = 0.2,
    word_drop: Annotated[float, typer.Option(help="Text-embedding dropout of the augmented view.")] = 0.2,
    max_minutes: Annotated[float | None, typer.Option(help="Stop after the epoch that crosses this budget.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="UniSRec model options as model.KEY=VALUE (model.dim, model.num_layers, model.text_encoder...).",
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
) -> None:
    """UniSRec pre-training on several text domains (sequence-item + sequence-sequence contrastive)."""
    from training.data import DatasetError
    from training.unisrec import PretrainConfig
    from training.unisrec import pretrain as run_pretrain

    names = tuple(d.strip() for d in datasets.split(",") if d.strip())
    if file:
        from training.data import FileOptions

        if items_file is None:
            _fail("pretrain --file needs --items-file: pre-training learns from item text")
        opts = FileOptions(items_file=str(items_file.resolve()), items_id_col=items_id_col)
        names += (_load_data("", file, data_dir, cache_dir, options=opts).name,)
    if not names:
        _fail("nothing to pre-train on: give --datasets or --file")
    pc = PretrainConfig(names, epochs, batch_size, lr, lam, item_drop, word_drop, max_minutes, seed)
    from training.config import ConfigError, check_fields
    from training.zoo import get_spec

    sets = _overrides(set_)
    if sets["train"] or sets["task"]:
        _fail("pretrain --set takes model.KEY=VALUE only (the pre-training options are flags)")
    try:
        overrides = check_fields(get_spec("unisrec").config_cls, sets["model"], "model")
    except ConfigError as exc:
        _fail(str(exc))
    overrides.pop("mode", None)  # pre-training reads text only (inductive)
    try:
        path = run_pretrain(pc, out, overrides, data_dir, cache_dir)
    except (DatasetError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps({"checkpoint": str(path)}))


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A best.pt written by `seqrec train`.")],
    dataset: Annotated[
        str | None, typer.Option(help="Dataset (default: the one the checkpoint was trained on).")
    ] = None,
    file: Annotated[
        list[Path] | None,
        typer.Option(
            help="Interaction file(s) to evaluate on (default: the file(s) the checkpoint was trained on, "
            "read with the same options)."
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="valid or test.")] = "test",
    include_history: Annotated[
        bool, typer.Option(help="Also rank items already in the user's history (default: they are excluded).")
    ] = False,
    sampled: Annotated[
        str | None,
        typer.Option(
            help="Also report SAMPLED metrics (100 negatives): uniform or popularity. Not comparable to full ranking."
        ),
    ] = None,
    popularity_baseline: Annotated[bool, typer.Option(help="Also report the popularity baseline.")] = False,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Full-ranking HR/NDCG/MRR@{1,5,10,20} on the split the checkpoint was trained with
    (leave-one-out, or next-item-in-session when trained with --sessions)."""
    from training.checkpoint import load_checkpoint
    from training.data import DatasetError, FileOptions, data_from_meta, leave_one_out, to_sessions
    from training.evaluate import full_rank_eval, popularity_score_fn, popularity_scores, sampled_eval
    from training.sessions import session_split

    if split not in ("valid", "test"):
        _fail("--split must be valid or test")
    try:
        model, ckpt = load_checkpoint(checkpoint)
    except FileNotFoundError as exc:
        _fail(str(exc))
    meta = ckpt.get("data_meta") or {}
    try:
        if file or dataset:
            source = meta.get("source") or {}
            opts = FileOptions.from_dict(source["options"]) if source.get("kind") == "files" else None
            data = _load_data(dataset or "", file, data_dir, cache_dir, options=opts)
            if meta.get("sessions"):
                p = meta["sessions"]
                data = to_sessions(data, p["rule"], p["gap_seconds"], p["max_len"], p["min_len"])
        else:
            data = data_from_meta(meta, ckpt["dataset"], data_dir, cache_dir)
    except DatasetError as exc:
        _fail(str(exc))
    if data.fingerprint() != ckpt["data_fingerprint"]:
        _fail(
            f"dataset {data.name!r} is not the data this checkpoint was trained on (fingerprint differs: "
            f"the file changed, or other options)"
        )
    protocol = meta.get("split") or {}
    sessions_protocol = protocol.get("protocol") in ("sessions", "user-sessions")
    if protocol.get("protocol") == "user-sessions":
        from training.hrnn import user_session_split

        s = user_session_split(data, protocol["gap_seconds"], protocol["history"])
        include_history = True  # as in training: the session protocols rank seen items too
    elif sessions_protocol:
        s = session_split(data, test_frac=protocol["test_frac"], valid_frac=protocol["valid_frac"])
        include_history = True  # the session protocol ranks seen items too (as in training)
    else:
        s = leave_one_out(data)
    hists, targets = (s.valid_hist, s.valid_target) if split == "valid" else (s.test_hist, s.test_target)
    from training.config import ConfigError
    from training.zoo import resolve, time_eval_kwargs

    try:
        task_cfg = resolve(ckpt["model"], None, None, ckpt.get("task_config") or {})[2]
        timed = time_eval_kwargs(
            ckpt["model"], model, task_cfg, s.valid_times if split == "valid" else s.test_times, data.name
        )
    except ConfigError as exc:
        _fail(str(exc))
    t = time.perf_counter()
    out: dict[str, Any] = {
        "split": split,
        "protocol": protocol["protocol"] if sessions_protocol else "leave-one-out",
        "queries": len(targets),
        "model": ckpt["model"],
        "dataset": data.name,
    }
    out["full"] = full_rank_eval(
        model.score, hists, targets, data.num_items, model.max_len, exclude_history=not include_history, **timed
    )
    out["eval_seconds"] = round(time.perf_counter() - t, 2)
    pop = popularity_scores(s.train, data.num_items)
    if popularity_baseline:
        out["popularity"] = full_rank_eval(
            popularity_score_fn(pop), hists, targets, data.num_items, model.max_len, exclude_history=not include_history
        )
    if sampled:
        if sampled not in ("uniform", "popularity"):
            _fail("--sampled must be uniform or popularity")
        if timed:
            _fail("--sampled is not available for a model that reads event times (full ranking only)")
        out["sampled"] = sampled_eval(
            model.score,
            hists,
            targets,
            data.num_items,
            model.max_len,
            popularity=pop if sampled == "popularity" else None,
        )
    typer.echo(json.dumps(out, indent=2))


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A best.pt written by `seqrec train`.")],
    out: Annotated[Path, typer.Option(help="Folder that receives the bundle directory.")] = Path("artifacts"),
    name: Annotated[str | None, typer.Option(help="Bundle directory name (default <model>-<dataset>-<time>).")] = None,
    with_text: Annotated[bool, typer.Option(help="Include item titles/text when the dataset has them.")] = True,
    layer_vectors: Annotated[
        bool, typer.Option(help="BERT4Rec: add the four-layer item representation for similar items (layers4).")
    ] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Write the artifact bundle: ONNX + TorchScript, item vectors, ids, popularity, manifest."""
    from training.checkpoint import load_checkpoint
    from training.data import DatasetError, item_text
    from training.export import ExportError, export_bundle

    try:
        _, ckpt = load_checkpoint(checkpoint)
    except FileNotFoundError as exc:
        _fail(str(exc))
    text = None
    if with_text:
        try:
            text = item_text(ckpt["dataset"], data_dir, meta=ckpt.get("data_meta"))
        except DatasetError:
            text = None  # datasets without text (or generic files) export without it
    try:
        path = export_bundle(checkpoint, out, name, item_text=text, layer_vectors=layer_vectors)
    except ExportError as exc:
        _fail(str(exc))
    typer.echo(str(path))


def _print_examples(settings: Any, host: str, port: int) -> None:
    """Two copy-paste curl commands using real item ids of the default bundle (its most popular items)."""
    import numpy as np

    path = settings.bundles[0]
    ids = json.loads((path / "item_ids.json").read_text())
    top = np.argsort(-np.load(path / "popularity.npy"), kind="stable")[:3]
    events = [{"user_id": "demo-user", "item_id": ids[i], "timestamp": 1700000000 + n} for n, i in enumerate(top)]
    body = json.dumps({"events": events}, separators=(",", ":"))
    base = f"http://{host}:{port}"
    key = f" -H 'X-API-Key: {settings.api_key.get_secret_value()}'" if settings.api_key else ""
    typer.echo("\nServer starting; try:\n")
    typer.echo(f"  curl -s -X POST {base}/events -H 'Content-Type: application/json'{key} -d '{body}'")
    typer.echo(f"  curl -s '{base}/recommend/demo-user?k=5'")
    typer.echo(f"\nOpenAPI docs: {base}/docs   (Ctrl-C stops the server)\n")


@app.command()
def snapshot(
    redis_url: Annotated[
        str,
        typer.Option(
            help="Redis URL of the event store: redis://host:port/db, or redis+cluster://host:port,... for a cluster."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Output file: Parquet, or CSV when the name ends in .csv.")] = Path(
        "events.parquet"
    ),
    prefix: Annotated[str, typer.Option(help="Key prefix the service writes (SEQREC_KEY_PREFIX).")] = "seqrec:",
    source: Annotated[
        str,
        typer.Option(
            help="log: every event the service logged (SEQREC_EVENT_LOG); window: each user's last "
            "SEQREC_MAX_HISTORY events, as serving reads them."
        ),
    ] = "log",
    since: Annotated[
        str | None,
        typer.Option(help="log: events that arrived at or after this time (epoch seconds or ISO-8601; naive = UTC)."),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(help="log: events that arrived before this time (default: everything logged so far)."),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="log: a JSON file of the last stream ids exported; the run starts after them and moves them "
            "once the output is written, so the next run continues there (created when missing)."
        ),
    ] = None,
    progress: Annotated[bool | None, typer.Option(help="Show a progress bar (default: only on a terminal).")] = None,
) -> None:
    """Export the event store as user_id, item_id, timestamp, event_id rows: the event log (by arrival
    time, resumable), or every user's window."""
    from training.snapshot import SnapshotError, connect, parse_time, snapshot_log
    from training.snapshot import snapshot as run_snapshot

    if source not in ("log", "window"):
        _fail(f"--source is 'log' or 'window', not {source!r}")
    if source == "window" and (since or until or checkpoint):
        _fail("--since, --until and --checkpoint select from the event log (--source log)")
    try:
        if source == "window":
            result = run_snapshot(connect(redis_url), out, prefix=prefix, progress=progress)
        else:
            t0, t1 = (parse_time(t) if t is not None else None for t in (since, until))
            result = snapshot_log(
                connect(redis_url), out, prefix=prefix, since=t0, until=t1, checkpoint=checkpoint, progress=progress
            )
    except SnapshotError as exc:
        _fail(str(exc), code=1)
    for warning in result.warnings:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
    typer.echo(
        json.dumps(
            {
                "out": str(result.path),
                "source": source,
                "users": result.users,
                "events": result.events,
                "seconds": round(result.seconds, 2),
            }
        )
    )


@app.command()
def serve(
    bundle: Annotated[
        list[Path] | None,
        typer.Option("--bundle", help="Bundle directory to serve (repeatable; default: $SEQREC_BUNDLES)."),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[
        int,
        typer.Option(
            help="Worker processes; each loads the bundles and listens on its own socket of the port"
            " (SEQREC_REUSE_PORT). Needs Redis when > 1."
        ),
    ] = 1,
    redis_url: Annotated[
        str | None, typer.Option(help="Redis URL (default: $SEQREC_REDIS_URL; unset = in-process store).")
    ] = None,
    api_key: Annotated[str | None, typer.Option(help="Require X-API-Key on writes (default: $SEQREC_API_KEY).")] = None,
    examples: Annotated[bool, typer.Option(help="Print two curl commands that work against this server.")] = False,
) -> None:
    """Run the online service (uvicorn). Every other setting comes from SEQREC_* variables (see docs/deploy.md)."""
    import os

    try:
        import uvicorn  # noqa: F401  serve extra; imported lazily so training images need not have it

        from app.settings import Settings
    except ImportError as exc:
        _fail(f"the serve extra is not installed ({exc}); pip install 'seqrec[serve]'")
    # Settings travel by environment so every worker process builds the same app.
    if bundle:
        os.environ["SEQREC_BUNDLES"] = ",".join(str(p.resolve()) for p in bundle)
    if redis_url is not None:
        os.environ["SEQREC_REDIS_URL"] = redis_url
    if api_key is not None:
        os.environ["SEQREC_API_KEY"] = api_key
    if workers > 1 and not os.environ.get("SEQREC_REDIS_URL"):
        _fail("--workers > 1 needs Redis: the in-process store is per process")
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        import tempfile

        # /metrics must add up every worker, not show whichever one answered the scrape.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="seqrec-metrics-")
    try:
        settings = Settings()
    except Exception as exc:  # pydantic ValidationError: report it plainly instead of a traceback
        _fail(f"invalid settings: {exc}")
    if settings.experiment:
        from app.serving.experiment import Experiment, ExperimentError

        try:  # the syntax here; the bundle names once the bundles are loaded (at start-up)
            Experiment.parse(settings.experiment, settings.experiment_salt)
        except ExperimentError as exc:
            _fail(f"SEQREC_EXPERIMENT: {exc}")
    if examples:
        _print_examples(Settings(), host, port)
    from app.runtime.server import serve as run_server

    code = run_server(host, port, workers, reuse_port=settings.reuse_port)
    if code:
        raise typer.Exit(code)


@app.command()
def demo(
    recipe: Annotated[Path, typer.Option(help="The recipe of the demo model (run from the repository root).")] = Path(
        "recipes/demo-ml-1m.toml"
    ),
    dataset: Annotated[str | None, typer.Option(help="Named dataset (default: the recipe's).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Override the recipe's epoch limit.")] = None,
    out: Annotated[Path, typer.Option(help="Run directory of the demo model.")] = Path("runs/demo-sasrec"),
    artifacts: Annotated[Path, typer.Option(help="Folder that receives the demo bundle.")] = Path("artifacts"),
    port: Annotated[int, typer.Option(help="Port of the demo server on 127.0.0.1.")] = 8000,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
) -> None:
    """The whole pipeline in one command: prepare, train the demo recipe (~2 min), evaluate, export, serve."""
    import shutil

    from training.config import ConfigError, Recipe
    from training.data import DatasetError
    from training.data import prepare as prepare_data
    from training.data.readers import default_data_dir

    try:
        rec = Recipe.load(recipe)
    except ConfigError as exc:
        _fail(f"{exc} (run `make demo` from the repository root, or pass --recipe)")
    name = dataset or rec.dataset or "ml-1m"
    where = data_dir or default_data_dir()
    try:
        # ML-1M is fetched from its public addresses when its folder is missing (seqrec download).
        prepare_data(name, data_dir, cache_dir)
    except DatasetError as exc:
        _fail(
            f"{exc}\n\nThe demo needs {name} under {where}. Either fetch it (internet: GroupLens and GitHub):\n"
            f"    seqrec download {name} --data-dir data\n"
            "or point --data-dir (or SEQREC_DATA_DIR) at a folder that holds it "
            "(e.g. ml-1m/ml-1m.sasrec.txt); then run `make demo` again."
        )
    # The commands are plain functions with real defaults: the demo is the documented CLI, chained.
    prepare(dataset=name, data_dir=data_dir, cache_dir=cache_dir)
    train(recipe=recipe, dataset=name, out=out, data_dir=data_dir, cache_dir=cache_dir, epochs=epochs)
    evaluate(out / "best.pt", popularity_baseline=True, data_dir=data_dir, cache_dir=cache_dir)
    bundle_name = f"demo-{rec.model or 'sasrec'}"
    shutil.rmtree(artifacts / bundle_name, ignore_errors=True)
    export(out / "best.pt", out=artifacts, name=bundle_name, data_dir=data_dir)
    serve(bundle=[artifacts / bundle_name], port=port, examples=True)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
