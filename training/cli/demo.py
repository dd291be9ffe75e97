"""`seqrec demo`: the documented commands chained, from raw data to a running server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from training.cli.common import CacheDirOpt, DataDirOpt, fail
from training.cli.data import prepare
from training.cli.evaluate import evaluate, export
from training.cli.live import serve
from training.cli.train import train


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
        fail(f"{exc} (run `make demo` from the repository root, or pass --recipe)")
    name = dataset or rec.dataset or "ml-1m"
    where = data_dir or default_data_dir()
    try:
        # ML-1M is fetched from its public addresses when its folder is missing (seqrec download).
        prepare_data(name, data_dir, cache_dir)
    except DatasetError as exc:
        fail(
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
