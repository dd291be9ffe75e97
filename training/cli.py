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

app = typer.Typer(
    name="seqrec",
    help="Sequential recommendation: prepare data, train GRU4Rec/SASRec/BERT4Rec/UniSRec, evaluate, export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

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


def _fail(msg: str, code: int = 2) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _load_data(dataset: str, file: Path | None, data_dir: Path | None, cache_dir: Path | None, force: bool = False):
    from training.data import DatasetError, prepare, prepare_file

    try:
        if file is not None:
            return prepare_file(file, cache_dir=cache_dir, force=force)
        return prepare(dataset, data_dir, cache_dir, force=force)
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
    file: Annotated[
        Path | None,
        typer.Option(
            help="A generic interactions file (CSV/TSV/Parquet with "
            "user_id, item_id, timestamp) instead of a named dataset."
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
    force: Annotated[bool, typer.Option(help="Rebuild the cache even when it exists.")] = False,
) -> None:
    """Read raw interactions, filter, order by time, remap ids and cache the result."""
    t = time.perf_counter()
    data = _load_data(dataset, file, data_dir, cache_dir, force=force)
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
        str | None, typer.Option(help="Named dataset to train on (default: the recipe's, else ml-1m).")
    ] = None,
    file: Annotated[Path | None, typer.Option(help="Generic interactions file instead of a named dataset.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/<model>-<dataset>-<time>).")] = None,
    max_len: Annotated[int | None, typer.Option(help="model.max_len: the history length the model reads.")] = None,
    dim: Annotated[int | None, typer.Option(help="model.dim: hidden size / embedding dimension.")] = None,
    num_layers: Annotated[int | None, typer.Option(help="model.num_layers: transformer blocks / GRU layers.")] = None,
    dropout: Annotated[float | None, typer.Option(help="model.dropout: dropout rate.")] = None,
    sessions: Annotated[
        str | None,
        typer.Option(
            help="Train and evaluate next-item-in-session instead of leave-one-out: cut each user's "
            "timeline into sessions by time gap (gap) or at the largest gaps (largest-gap); the newest "
            "sessions are the test set, every event after the first a query, seen items not excluded."
        ),
    ] = None,
    session_gap: Annotated[int, typer.Option(help="Seconds of inactivity that end a session (--sessions gap).")] = 1800,
    session_test_frac: Annotated[float, typer.Option(help="Newest fraction of sessions held out for test.")] = 0.1,
    init: Annotated[
        Path | None,
        typer.Option(help="task.init: UniSRec starts from a `seqrec pretrain` checkpoint (adaptor + transformer)."),
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
    flag_model = {"max_len": max_len, "dim": dim, "num_layers": num_layers, "dropout": dropout}
    layers.append(
        {
            "model": {k: v for k, v in flag_model.items() if v is not None} | ({"name": model} if model else {}),
            "train": {k: v for k, v in flags.items() if v is not None},
            "task": {"init": str(init)} if init is not None else {},
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
    split = None
    if sessions is not None:
        from training.data import DatasetError, to_sessions
        from training.sessions import session_split

        if sessions not in ("gap", "largest-gap"):
            _fail("--sessions must be gap or largest-gap")
        try:
            data = to_sessions(data, "gap" if sessions == "gap" else "largest", gap_seconds=session_gap)
        except DatasetError as exc:
            _fail(str(exc))
        split = session_split(data, test_frac=session_test_frac, valid_frac=session_test_frac)
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
                    {"test_recall@20": result.test.get("hr@20"), "test_mrr@20": result.test.get("mrr@20")}
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
    """Every option a recipe or --set can name: [model], [train] and [task] keys, types, defaults, help."""
    from training.options_doc import options_markdown, options_text

    try:
        typer.echo(options_markdown(model) if markdown else options_text(model))
    except ValueError as exc:
        _fail(str(exc))


@app.command()
def pretrain(
    datasets: Annotated[
        str, typer.Option(help="Comma-separated named datasets with item text, pre-trained on together.")
    ] = "ml-1m,ml-100k",
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
    file: Annotated[Path | None, typer.Option(help="Generic interactions file instead of a named dataset.")] = None,
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
    """Full-ranking HR/NDCG/MRR@{1,5,10,20} on the leave-one-out split."""
    from training.data import leave_one_out
    from training.evaluate import full_rank_eval, popularity_score_fn, popularity_scores, sampled_eval
    from training.train import load_checkpoint

    if split not in ("valid", "test"):
        _fail("--split must be valid or test")
    try:
        model, ckpt = load_checkpoint(checkpoint)
    except FileNotFoundError as exc:
        _fail(str(exc))
    data = _load_data(dataset or ckpt["dataset"], file, data_dir, cache_dir)
    if data.fingerprint() != ckpt["data_fingerprint"]:
        _fail(f"dataset {data.name!r} is not the data this checkpoint was trained on (fingerprint differs)")
    s = leave_one_out(data)
    hists, targets = (s.valid_hist, s.valid_target) if split == "valid" else (s.test_hist, s.test_target)
    t = time.perf_counter()
    out: dict[str, Any] = {"split": split, "model": ckpt["model"], "dataset": data.name}
    out["full"] = full_rank_eval(
        model.score, hists, targets, data.num_items, model.max_len, exclude_history=not include_history
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
    data_dir: DataDirOpt = None,
) -> None:
    """Write the artifact bundle: ONNX + TorchScript, item vectors, ids, popularity, manifest."""
    from training.data import DatasetError, item_text
    from training.export import ExportError, export_bundle
    from training.train import load_checkpoint

    try:
        _, ckpt = load_checkpoint(checkpoint)
    except FileNotFoundError as exc:
        _fail(str(exc))
    text = None
    if with_text:
        try:
            text = item_text(ckpt["dataset"], data_dir)
        except DatasetError:
            text = None  # datasets without text (or generic files) export without it
    try:
        path = export_bundle(checkpoint, out, name, item_text=text)
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
def serve(
    bundle: Annotated[
        list[Path] | None,
        typer.Option("--bundle", help="Bundle directory to serve (repeatable; default: $SEQREC_BUNDLES)."),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes (each loads the bundles; needs Redis when > 1).")] = 1,
    redis_url: Annotated[
        str | None, typer.Option(help="Redis URL (default: $SEQREC_REDIS_URL; unset = in-process store).")
    ] = None,
    api_key: Annotated[str | None, typer.Option(help="Require X-API-Key on writes (default: $SEQREC_API_KEY).")] = None,
    examples: Annotated[bool, typer.Option(help="Print two curl commands that work against this server.")] = False,
) -> None:
    """Run the online service (uvicorn). Every other setting comes from SEQREC_* variables (see README)."""
    import os

    try:
        import uvicorn  # serve extra; imported lazily so training images need not have it

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
        Settings()
    except Exception as exc:  # pydantic ValidationError: report it plainly instead of a traceback
        _fail(f"invalid settings: {exc}")
    if examples:
        _print_examples(Settings(), host, port)
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=False,  # the app writes its own JSON access log
        log_level="warning",
    )


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
