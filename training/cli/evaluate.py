"""`seqrec evaluate` (full ranking on the checkpoint's own split) and `seqrec export` (the bundle)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from training.cli.common import CacheDirOpt, DataDirOpt, fail


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
    from training.checkpoint_eval import EvaluationError, evaluate_checkpoint

    try:
        out = evaluate_checkpoint(
            checkpoint,
            dataset=dataset,
            files=file,
            split=split,
            include_history=include_history,
            sampled=sampled,
            popularity_baseline=popularity_baseline,
            data_dir=data_dir,
            cache_dir=cache_dir,
        )
    except EvaluationError as exc:
        fail(str(exc))
    typer.echo(json.dumps(out, indent=2))


def export(
    checkpoint: Annotated[Path, typer.Argument(help="A best.pt written by `seqrec train`.")],
    out: Annotated[Path, typer.Option(help="Folder that receives the bundle directory.")] = Path("artifacts"),
    name: Annotated[str | None, typer.Option(help="Bundle directory name (default <model>-<dataset>-<time>).")] = None,
    with_text: Annotated[bool, typer.Option(help="Include item titles/text when the dataset has them.")] = True,
    layer_vectors: Annotated[
        bool, typer.Option(help="BERT4Rec: add the four-layer item representation for similar items (layers4).")
    ] = False,
    program: Annotated[
        bool,
        typer.Option(help="Also write model.pt2, a torch.export program (not read by the service; slow to capture)."),
    ] = True,
    data_dir: DataDirOpt = None,
) -> None:
    """Write the artifact bundle: ONNX + TorchScript, item vectors, ids, popularity, manifest."""
    from training.checkpoint import load_checkpoint
    from training.data import DatasetError, item_text
    from training.export import ExportError, export_bundle

    try:
        _, ckpt = load_checkpoint(checkpoint)
    except FileNotFoundError as exc:
        fail(str(exc))
    text = None
    if with_text:
        try:
            text = item_text(ckpt["dataset"], data_dir, meta=ckpt.get("data_meta"))
        except DatasetError:
            text = None  # datasets without text (or generic files) export without it
    try:
        path = export_bundle(checkpoint, out, name, item_text=text, layer_vectors=layer_vectors, program=program)
    except ExportError as exc:
        fail(str(exc))
    typer.echo(str(path))
