"""`seqrec train`, `seqrec options` and `seqrec pretrain`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from training.cli.common import (
    CacheDirOpt,
    DataDirOpt,
    FileOpt,
    ItemsFileOpt,
    ItemsIdColOpt,
    check_eval,
    fail,
    load_data,
    overrides,
    print_report,
    with_train_flags,
)


@with_train_flags
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
    target_types: Annotated[
        str | None,
        typer.Option(help="Typed data: comma-separated types to predict (default: the data's declared target types)."),
    ] = None,
    negative_types: Annotated[
        str | None,
        typer.Option(
            help="Typed data: comma-separated types never input nor target (default: the data's declared negative "
            "types)."
        ),
    ] = None,
    untyped: Annotated[
        bool,
        typer.Option(
            help="Typed data: ignore the types (every event input and target) but keep the typed evaluation "
            "queries (the baseline)."
        ),
    ] = False,
    progress: Annotated[bool | None, typer.Option(help="Show progress bars (default: only on a terminal).")] = None,
    **flags: Any,
) -> None:
    """Train a model with early stopping on validation NDCG@10; writes checkpoint, metrics and a learning curve.

    Options come, lowest first, from the model's defaults, the --recipe file, the flags, then --set.
    """
    from training.plan import PlanError, plan_run, session_data
    from training.train import train as run_train

    try:
        plan = plan_run(
            recipe, init, model, dict(max_len=max_len, dim=dim, num_layers=num_layers, dropout=dropout), flags, set_
        )
    except PlanError as exc:
        fail(str(exc))
    dataset, file = plan.data_source(dataset, file)
    data = load_data(dataset, file, data_dir, cache_dir)
    if file:
        print_report(data)  # read here, not by `prepare`: say what reading found and removed
    split = None
    if sessions is not None:
        try:
            data, split = session_data(data, sessions, session_history, session_gap, session_test_frac)
        except PlanError as exc:
            fail(str(exc))
    run_dir = out or Path("runs") / f"{plan.model}-{data.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if getattr(data, "types", None) is not None and split is None:
        _train_typed(plan, data, run_dir, target_types, negative_types, untyped, progress)
        return
    check_eval(data, split, plan.train.max_users, min_eval_queries)
    try:
        result = run_train(
            plan.model,
            data,
            run_dir,
            plan.model_overrides,
            plan.train.to_dict(),
            progress=progress,
            split=split,
            exclude_history=split is None,
            task_overrides=plan.task.to_dict(),
            init=plan.warm_from,
        )
    except ValueError as exc:
        fail(str(exc))
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun only rank 0 evaluates and reports
    sessions_metrics = {"test_hr@20": result.test.get("hr@20"), "test_mrr@20": result.test.get("mrr@20")}
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
                **(sessions_metrics if split is not None else {}),
            }
        )
    )


def _train_typed(
    plan: Any, data: Any, run_dir: Path, targets: str | None, negatives: str | None, untyped: bool, progress: Any
) -> None:
    """Typed data: the typed split (negative events out, target types held out), then the typed test."""
    from training.event_types import train_with_types

    def names(csv: str | None) -> list[str] | None:
        return [x.strip() for x in csv.split(",") if x.strip()] if csv else None

    try:
        out = train_with_types(
            plan.model,
            data,
            run_dir,
            plan.model_overrides,
            plan.train.to_dict(),
            plan.task.to_dict(),
            negative_types=names(negatives),
            target_types=names(targets),
            use_types=not untyped,
            progress=progress,
        )
    except ValueError as exc:
        fail(str(exc))
    typer.echo(json.dumps({"run_dir": str(run_dir), **{k: out[k] for k in ("typed", "best_epoch", "test")}}))


def options(
    model: Annotated[str | None, typer.Option(help="Show this model's defaults (default: every model).")] = None,
    markdown: Annotated[bool, typer.Option(help="Print Markdown tables (as in docs/recipes.md).")] = False,
) -> None:
    """Every option a recipe or --set can name: \\[model], \\[train] and \\[task] keys, types, defaults, help."""
    from training.options_doc import options_markdown, options_text

    try:
        typer.echo(options_markdown(model) if markdown else options_text(model))
    except ValueError as exc:
        fail(str(exc))


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
    max_minutes: Annotated[
        float | None, typer.Option(help="Minutes of wall clock; stops at the next step once spent.")
    ] = None,
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
            fail("pretrain --file needs --items-file: pre-training learns from item text")
        opts = FileOptions(items_file=str(items_file.resolve()), items_id_col=items_id_col)
        names += (load_data("", file, data_dir, cache_dir, options=opts).name,)
    if not names:
        fail("nothing to pre-train on: give --datasets or --file")
    pc = PretrainConfig(names, epochs, batch_size, lr, lam, item_drop, word_drop, max_minutes, seed)
    from training.config import ConfigError, check_fields
    from training.zoo import get_spec

    sets = overrides(set_)
    if sets["train"] or sets["task"]:
        fail("pretrain --set takes model.KEY=VALUE only (the pre-training options are flags)")
    try:
        model_over = check_fields(get_spec("unisrec").config_cls, sets["model"], "model")
    except ConfigError as exc:
        fail(str(exc))
    model_over.pop("mode", None)  # pre-training reads text only (inductive)
    try:
        path = run_pretrain(pc, out, model_over, data_dir, cache_dir)
    except (DatasetError, ValueError) as exc:
        fail(str(exc))
    typer.echo(json.dumps({"checkpoint": str(path)}))
