"""`seqrec`: prepare data, train, evaluate and export models (and, with the serve extra, serve them).

One module per group of commands; each command parses its options, calls one function of
`training/` (or `app/` for the service's commands) and prints the result.
"""

from __future__ import annotations

import sys

import typer

from training.cli import data, demo, evaluate, live, recommend, train
from training.cli.catalog import catalog_app

app = typer.Typer(
    name="seqrec",
    help="Sequential recommendation: prepare data, train GRU4Rec/SASRec/BERT4Rec/UniSRec, evaluate, export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for command in (
    data.prepare,
    data.download,
    train.train,
    train.options,
    train.pretrain,
    evaluate.evaluate,
    evaluate.export,
    live.snapshot,
    live.backfill,
    live.serve,
    recommend.recommend,
    demo.demo,
):
    app.command()(command)
app.add_typer(catalog_app, name="catalog")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
