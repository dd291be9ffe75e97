"""`seqrec`: prepare data, train, evaluate and export models (and, with the serve extra, serve them)."""

from __future__ import annotations

import json
import os
import sys
import time
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


def _parse_sets(pairs: list[str]) -> dict[str, Any]:
    """`key=value` pairs; values parsed as JSON when they can be (numbers, true/false, null)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            _fail(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


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
def train(
    model: Annotated[str, typer.Option(help="Model: sasrec, bert4rec, gru4rec (see training/zoo.py).")] = "sasrec",
    dataset: Annotated[str, typer.Option(help="Named dataset to train on.")] = "ml-1m",
    file: Annotated[Path | None, typer.Option(help="Generic interactions file instead of a named dataset.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/<model>-<dataset>-<time>).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs (model default when omitted).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Sequences per batch.")] = None,
    lr: Annotated[float | None, typer.Option(help="AdamW learning rate.")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="AdamW weight decay.")] = None,
    loss: Annotated[
        str | None, typer.Option(help="Loss: ce (full softmax), bce (sampled negatives), sampled (sampled softmax).")
    ] = None,
    num_negatives: Annotated[
        int | None, typer.Option(help="Negatives per positive (bce) or per batch (sampled).")
    ] = None,
    patience: Annotated[
        int | None, typer.Option(help="Evaluations without validation NDCG@10 gain before stopping.")
    ] = None,
    eval_every: Annotated[int | None, typer.Option(help="Evaluate on validation every N epochs.")] = None,
    max_minutes: Annotated[
        float | None, typer.Option(help="Stop after the epoch that crosses this wall-clock budget.")
    ] = None,
    max_users: Annotated[int | None, typer.Option(help="Use only the first N users (quick experiments).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (data order, init, sampling).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    lr_schedule: Annotated[
        str | None,
        typer.Option(
            help="constant; cosine: linear warm-up, then cosine decay to 0 at --epochs, or where "
            "--max-minutes will stop training if that comes first (estimated from the pace so far); "
            "wsd: warm-up, the peak lr held, then a linear decay to 0 over the last --decay-fraction "
            "of the run (same end)."
        ),
    ] = None,
    decay_fraction: Annotated[
        float | None, typer.Option(help="wsd only: the final fraction of the run over which the lr decays to 0.")
    ] = None,
    warmup_epochs: Annotated[float | None, typer.Option(help="Epochs of linear learning-rate warm-up.")] = None,
    bucket: Annotated[
        bool | None,
        typer.Option(help="Length-bucketed batches: rows of similar length together, less padding, faster epochs."),
    ] = None,
    amp_cpu: Annotated[
        bool | None,
        typer.Option(help="bf16 autocast on CPU too (faster where the CPU has AVX512-BF16/AMX; CUDA always uses it)."),
    ] = None,
    ema: Annotated[
        float | None,
        typer.Option(
            help="Decay of an exponential moving average of the weights (e.g. 0.995; 0 = off). Validation, "
            "early stopping, the checkpoint and export use the average; horizon ~ 1/(1-decay) steps."
        ),
    ] = None,
    max_len: Annotated[int | None, typer.Option(help="Maximum history length the model reads.")] = None,
    dim: Annotated[int | None, typer.Option(help="Hidden size / embedding dimension.")] = None,
    num_layers: Annotated[int | None, typer.Option(help="Number of transformer / GRU layers.")] = None,
    dropout: Annotated[float | None, typer.Option(help="Dropout rate.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Any other model option as key=value "
            "(e.g. --set num_heads=2 --set norm_first=false); "
            "train options as train.key=value.",
        ),
    ] = None,
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
        typer.Option(
            help="Warm start from a previous bundle directory or best.pt (any model: item rows matched by id, "
            "new items at the mean row, the source's architecture); UniSRec also takes a `seqrec pretrain` "
            "checkpoint (adaptor + transformer)."
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
    progress: Annotated[bool | None, typer.Option(help="Show progress bars (default: only on a terminal).")] = None,
) -> None:
    """Train a model with early stopping on validation NDCG@10; writes checkpoint, metrics and a learning curve."""
    from training.train import train as run_train
    from training.zoo import MODELS

    if model not in MODELS:
        _fail(f"unknown model {model!r}; known: {', '.join(MODELS)}")
    data = _load_data(dataset, file, data_dir, cache_dir)
    sets = _parse_sets(set_ or [])
    model_over = {k: v for k, v in sets.items() if not k.startswith("train.")}
    model_over.update(
        {
            k: v
            for k, v in {"max_len": max_len, "dim": dim, "num_layers": num_layers, "dropout": dropout}.items()
            if v is not None
        }
    )
    extra = {k[6:]: v for k, v in sets.items() if k.startswith("train.")}
    warm_from = None
    if init is not None:
        from training.warm_start import is_warm_start_source

        if is_warm_start_source(init):
            warm_from = init
        elif not init.is_file():
            _fail(f"{init}: not found (neither a bundle directory nor a checkpoint file)")
        else:
            extra["init"] = str(init)  # a UniSRec pre-training checkpoint (training/unisrec.py checks it)
    train_over: dict[str, Any] = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "loss": loss,
        "num_negatives": num_negatives,
        "patience": patience,
        "eval_every": eval_every,
        "max_minutes": max_minutes,
        "max_users": max_users,
        "seed": seed,
        "device": device,
        "lr_schedule": lr_schedule,
        "warmup_epochs": warmup_epochs,
        "decay_fraction": decay_fraction,
        "bucket": bucket,
        "amp_cpu": amp_cpu,
        "ema": ema,
    }
    from training.config import TrainConfig

    known_train = set(TrainConfig.__dataclass_fields__)
    for k in list(extra):
        if k in known_train:
            train_over[k] = extra.pop(k)
    if extra:
        train_over["extra"] = {**MODELS[model].train_defaults.extra, **extra}
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
    run_dir = out or Path("runs") / f"{model}-{data.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        result = run_train(
            model,
            data,
            run_dir,
            model_over,
            train_over,
            progress=progress,
            split=split,
            exclude_history=split is None,
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
                    {"test_recall@20": result.test.get("hr@20"), "test_mrr@20": result.test.get("mrr@20")}
                    if split is not None
                    else {}
                ),
            }
        )
    )


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
        typer.Option("--set", help="UniSRec model options as key=value (dim, num_layers, max_len, text_encoder...)."),
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
    from training.zoo import MODELS

    overrides = {**MODELS["unisrec"].model_defaults, **_parse_sets(set_ or [])}
    overrides.pop("mode", None)
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
def snapshot(
    redis_url: Annotated[str, typer.Option(help="Redis URL of the event store (redis://host:port/db).")],
    out: Annotated[Path, typer.Option(help="Output file: Parquet, or CSV when the name ends in .csv.")] = Path(
        "events.parquet"
    ),
    prefix: Annotated[str, typer.Option(help="Key prefix the service writes (SEQREC_KEY_PREFIX).")] = "seqrec:",
    progress: Annotated[bool | None, typer.Option(help="Show a progress bar (default: only on a terminal).")] = None,
) -> None:
    """Stream every user's history out of Redis into user_id, item_id, timestamp, event_id rows."""
    from training.snapshot import SnapshotError, connect
    from training.snapshot import snapshot as run_snapshot

    try:
        result = run_snapshot(connect(redis_url), out, prefix=prefix, progress=progress)
    except SnapshotError as exc:
        _fail(str(exc), code=1)
    typer.echo(
        json.dumps(
            {
                "out": str(result.path),
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
        settings = Settings()
    except Exception as exc:  # pydantic ValidationError: report it plainly instead of a traceback
        _fail(f"invalid settings: {exc}")
    if settings.experiment:
        from app.experiment import Experiment, ExperimentError

        try:  # the syntax here; the bundle names once the bundles are loaded (at start-up)
            Experiment.parse(settings.experiment, settings.experiment_salt)
        except ExperimentError as exc:
            _fail(f"SEQREC_EXPERIMENT: {exc}")
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
    dataset: Annotated[str, typer.Option(help="Named dataset to prepare and train on.")] = "ml-1m",
    epochs: Annotated[int, typer.Option(help="Training epochs (a brief run: the demo is about the pipeline).")] = 3,
    out: Annotated[Path, typer.Option(help="Run directory of the demo model.")] = Path("runs/demo-sasrec"),
    artifacts: Annotated[Path, typer.Option(help="Folder that receives the demo bundle.")] = Path("artifacts"),
    port: Annotated[int, typer.Option(help="Port of the demo server on 127.0.0.1.")] = 8000,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
) -> None:
    """The whole pipeline in one command: prepare, train SASRec briefly, evaluate, export, serve."""
    import shutil

    # The commands are plain functions with real defaults: the demo is the documented CLI, chained.
    prepare(dataset=dataset, data_dir=data_dir, cache_dir=cache_dir)
    train(model="sasrec", dataset=dataset, out=out, epochs=epochs, data_dir=data_dir, cache_dir=cache_dir)
    evaluate(out / "best.pt", popularity_baseline=True, data_dir=data_dir, cache_dir=cache_dir)
    shutil.rmtree(artifacts / "demo-sasrec", ignore_errors=True)
    export(out / "best.pt", out=artifacts, name="demo-sasrec", data_dir=data_dir)
    serve(bundle=[artifacts / "demo-sasrec"], port=port, examples=True)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
