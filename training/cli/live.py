"""`seqrec snapshot` (the event store out, for retraining) and `seqrec serve` (the online service)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from training.cli.common import (
    ColumnsOpt,
    EventColOpt,
    FixIdsOpt,
    ItemColOpt,
    SepOpt,
    SinceOpt,
    TimeColOpt,
    TimeUnitOpt,
    UntilOpt,
    UserColOpt,
    fail,
    file_options,
)


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
    default_type: Annotated[
        str,
        typer.Option(
            help="The type written for events stored without one, when the export has a type column: the "
            "service's SEQREC_DEFAULT_EVENT_TYPE."
        ),
    ] = "view",
    progress: Annotated[bool | None, typer.Option(help="Show a progress bar (default: only on a terminal).")] = None,
) -> None:
    """Export the event store as user_id, item_id, timestamp, event_id rows: the event log (by arrival
    time, resumable), or every user's window."""
    from training.snapshot import SnapshotError, connect, parse_time, snapshot_log
    from training.snapshot import snapshot as run_snapshot

    if source not in ("log", "window"):
        fail(f"--source is 'log' or 'window', not {source!r}")
    if source == "window" and (since or until or checkpoint):
        fail("--since, --until and --checkpoint select from the event log (--source log)")
    try:
        if source == "window":
            result = run_snapshot(connect(redis_url), out, prefix=prefix, progress=progress, default_type=default_type)
        else:
            t0, t1 = (parse_time(t) if t is not None else None for t in (since, until))
            result = snapshot_log(
                connect(redis_url),
                out,
                prefix=prefix,
                since=t0,
                until=t1,
                checkpoint=checkpoint,
                progress=progress,
                default_type=default_type,
            )
    except SnapshotError as exc:
        fail(str(exc), code=1)
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
        fail(f"the serve extra is not installed ({exc}); pip install 'seqrec[serve]'")
    # Settings travel by environment so every worker process builds the same app.
    if bundle:
        os.environ["SEQREC_BUNDLES"] = ",".join(str(p.resolve()) for p in bundle)
    if redis_url is not None:
        os.environ["SEQREC_REDIS_URL"] = redis_url
    if api_key is not None:
        os.environ["SEQREC_API_KEY"] = api_key
    if workers > 1 and not os.environ.get("SEQREC_REDIS_URL"):
        fail("--workers > 1 needs Redis: the in-process store is per process")
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        import tempfile

        # /metrics must add up every worker, not show whichever one answered the scrape.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="seqrec-metrics-")
    try:
        settings = Settings()
    except Exception as exc:  # pydantic ValidationError: report it plainly instead of a traceback
        fail(f"invalid settings: {exc}")
    if settings.experiment:
        from app.serving.experiment import Experiment, ExperimentError

        try:  # the syntax here; the bundle names once the bundles are loaded (at start-up)
            Experiment.parse(settings.experiment, settings.experiment_salt)
        except ExperimentError as exc:
            fail(f"SEQREC_EXPERIMENT: {exc}")
    if examples:
        _print_examples(Settings(), host, port)
    from app.runtime.server import serve as run_server

    code = run_server(host, port, workers, reuse_port=settings.reuse_port)
    if code:
        raise typer.Exit(code)


def backfill(
    file: Annotated[
        list[Path],
        typer.Option(
            "--file",
            help="Offline history: CSV/TSV/Parquet (optionally .gz) with user, item and time columns (and event "
            "ids), as `seqrec prepare --file` reads it; repeatable.",
        ),
    ],
    redis_url: Annotated[
        str,
        typer.Option(
            help="Redis URL of the event store: redis://host:port/db, or redis+cluster://host:port,... for a cluster."
        ),
    ],
    prefix: Annotated[str, typer.Option(help="Key prefix the service writes (SEQREC_KEY_PREFIX).")] = "seqrec:",
    batch: Annotated[
        int, typer.Option(help="Rows per write, rounded up to whole users; the checkpoint in Redis moves after each.")
    ] = 10_000,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue after the last batch the checkpoint holds (a run that stopped midway); without it the "
            "backfill starts at row 0 and adds nothing already stored."
        ),
    ] = False,
    log: Annotated[
        bool,
        typer.Option(
            help="Also append the events to the event log, as POST /events would (off: the offline file is "
            "already the training record; docs/live-loop.md)."
        ),
    ] = False,
    sep: SepOpt = None,
    columns: ColumnsOpt = None,
    user_col: UserColOpt = None,
    item_col: ItemColOpt = None,
    time_col: TimeColOpt = None,
    time_unit: TimeUnitOpt = "auto",
    event_col: EventColOpt = None,
    fix_ids: FixIdsOpt = False,
    since: SinceOpt = None,
    until: UntilOpt = None,
    progress: Annotated[bool, typer.Option(help="Progress lines on stderr.")] = True,
) -> None:
    """Load an offline history into the event store's windows before going live: the service's own append
    script, idempotent (a rerun adds nothing), resumable (--resume)."""
    try:
        from training.backfill import BackfillError
        from training.backfill import backfill as run_backfill
    except ImportError as exc:
        fail(f"the serve extra is not installed ({exc}); pip install 'seqrec[serve]'")
    from training.data import DatasetError

    opts = file_options(
        sep,
        columns,
        user_col=user_col,
        item_col=item_col,
        time_col=time_col,
        event_col=event_col,
        time_unit=time_unit,
        fix_ids=fix_ids,
        since=since,
        until=until,
    )
    try:
        opts.check()
        result = run_backfill(
            file, redis_url, prefix=prefix, batch=batch, resume=resume, log=log, opts=opts, progress=progress
        )
    except (BackfillError, DatasetError) as exc:
        fail(str(exc), code=1)
    typer.echo(json.dumps(result.to_dict()))
