"""`seqrec recommend`: top-k lists for many users at once, as the service would answer them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from training.cli.common import fail


def recommend(
    bundle: Annotated[Path, typer.Argument(help="A bundle directory, as the service loads it.")],
    source: Annotated[
        str,
        typer.Option(
            "--from",
            help="A prepared dataset's name (e.g. ml-1m), a snapshot file (.parquet/.csv from `seqrec snapshot`), "
            "or a Redis URL (redis://..., redis+cluster://...: the users' windows).",
        ),
    ],
    out: Annotated[Path, typer.Option(help="The Parquet file to write (user_id, rank, item_id, score).")],
    k: Annotated[int, typer.Option(help="Items per user.")] = 10,
    filter_: Annotated[
        str | None,
        typer.Option("--filter", help="A filter over the catalogue's attributes, as in GET /recommend."),
    ] = None,
    rule: Annotated[str | None, typer.Option(help="A named rule of SEQREC_RULES to apply as well.")] = None,
    include_unavailable: Annotated[bool, typer.Option(help="Also list unavailable items.")] = False,
    keep_seen: Annotated[bool, typer.Option(help="Keep items the user has seen.")] = False,
    users: Annotated[Path | None, typer.Option(help="Only these users: a file of one id per line.")] = None,
    workers: Annotated[int, typer.Option(help="Processes; 0 = one per core.")] = 0,
    threads: Annotated[int, typer.Option(help="ONNX Runtime threads per process.")] = 1,
    chunk: Annotated[int, typer.Option(help="Users per chunk (one Parquet row group).")] = 4096,
    redis_url: Annotated[
        str | None,
        typer.Option(help="Where the catalogue lives (default: the source's Redis, else SEQREC_REDIS_URL)."),
    ] = None,
    key_prefix: Annotated[str | None, typer.Option(help="Key prefix of the service (SEQREC_KEY_PREFIX).")] = None,
    max_history: Annotated[
        int | None, typer.Option(help="Events read per user (SEQREC_MAX_HISTORY, default 200).")
    ] = None,
) -> None:
    """Top-k lists for every user of a dataset, a snapshot or a Redis, with the service's own ranking,
    rules and exclusions, streamed to Parquet; every core used, progress on stderr."""
    try:
        from app.settings import Settings
        from training.batch_recommend import recommend_batch
    except ImportError as exc:
        fail(f"the serve extra is not installed ({exc}); pip install 'seqrec[serve]'")
    given = {"redis_url": redis_url, "key_prefix": key_prefix, "max_history": max_history}
    try:
        settings = Settings(bundles=[bundle], **{k_: v for k_, v in given.items() if v is not None})
    except Exception as exc:  # pydantic ValidationError: plainly, without a traceback
        fail(f"invalid settings: {exc}")
    wanted = [u.strip() for u in users.read_text().splitlines() if u.strip()] if users else None
    result: Any = None
    try:
        result = recommend_batch(
            bundle,
            source,
            out,
            k=k,
            filter=filter_,
            include_unavailable=include_unavailable,
            rule=rule,
            exclude_seen=not keep_seen,
            users=wanted,
            workers=workers,
            threads=threads,
            chunk=chunk,
            settings=settings,
        )
    except (ValueError, OSError) as exc:  # DatasetError, FilterError, Refused, BundleError: a message each
        fail(str(exc))
    typer.echo(
        json.dumps(
            {
                "out": str(result.path),
                "users": result.users,
                "rows": result.rows,
                "popularity": result.popularity,
                "seconds": round(result.seconds, 2),
                "workers": result.workers,
                "users_per_s": round(result.users_per_s),
            }
        )
    )
