"""Evaluate a trained checkpoint on the split it was trained with (what `seqrec evaluate` prints).

The data are found again from the checkpoint's own record (or given), checked against its
fingerprint, and split by the protocol it was trained with: leave-one-out, or next item in session.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


class EvaluationError(ValueError):
    """The checkpoint, its data or an option cannot be evaluated as asked (message says why)."""


def _data(ckpt: dict[str, Any], dataset: str | None, files: list[Path] | None, data_dir, cache_dir) -> Any:
    from training.data import FileOptions, data_from_meta, load_dataset, prepare_files, to_sessions

    meta = ckpt.get("data_meta") or {}
    if not (files or dataset):
        return data_from_meta(meta, ckpt["dataset"], data_dir, cache_dir)
    source = meta.get("source") or {}
    opts = FileOptions.from_dict(source["options"]) if source.get("kind") == "files" else None
    data = (
        prepare_files(list(files), opts, cache_dir=cache_dir)
        if files
        else load_dataset(dataset or "", data_dir, cache_dir)
    )
    if meta.get("sessions"):
        p = meta["sessions"]
        data = to_sessions(data, p["rule"], p["gap_seconds"], p["max_len"], p["min_len"])
    return data


def evaluate_checkpoint(
    checkpoint: Path,
    dataset: str | None = None,
    files: list[Path] | None = None,
    split: str = "test",
    include_history: bool = False,
    sampled: str | None = None,
    popularity_baseline: bool = False,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Full-ranking metrics (and, when asked, the popularity baseline and sampled metrics)."""
    from training.checkpoint import load_checkpoint
    from training.config import ConfigError
    from training.data import DatasetError, leave_one_out
    from training.evaluate import full_rank_eval, popularity_score_fn, popularity_scores, sampled_eval
    from training.sessions import session_split
    from training.zoo import resolve, time_eval_kwargs

    if split not in ("valid", "test"):
        raise EvaluationError("--split must be valid or test")
    if sampled not in (None, "uniform", "popularity"):
        raise EvaluationError("--sampled must be uniform or popularity")
    try:
        model, ckpt = load_checkpoint(checkpoint)
    except FileNotFoundError as exc:
        raise EvaluationError(str(exc)) from None
    if getattr(model, "reads_types", False):  # its histories would need each event's type, this split has none
        raise EvaluationError("this model reads event types: its typed test is typed.json in its run directory")
    try:
        data = _data(ckpt, dataset, files, data_dir, cache_dir)
    except DatasetError as exc:
        raise EvaluationError(str(exc)) from None
    if data.fingerprint() != ckpt["data_fingerprint"]:
        raise EvaluationError(
            f"dataset {data.name!r} is not the data this checkpoint was trained on (fingerprint differs: "
            f"the file changed, or other options)"
        )
    protocol = (ckpt.get("data_meta") or {}).get("split") or {}
    sessions_protocol = protocol.get("protocol") in ("sessions", "user-sessions")
    if protocol.get("protocol") == "user-sessions":
        from training.hrnn import user_session_split

        s = user_session_split(data, protocol["gap_seconds"], protocol["history"])
    elif sessions_protocol:
        s = session_split(data, test_frac=protocol["test_frac"], valid_frac=protocol["valid_frac"])
    else:
        s = leave_one_out(data)
    exclude = not (include_history or sessions_protocol)  # as in training: session protocols rank seen items
    hists, targets = (s.valid_hist, s.valid_target) if split == "valid" else (s.test_hist, s.test_target)
    try:
        task_cfg = resolve(ckpt["model"], None, None, ckpt.get("task_config") or {})[2]
        timed = time_eval_kwargs(
            ckpt["model"], model, task_cfg, s.valid_times if split == "valid" else s.test_times, data.name
        )
    except ConfigError as exc:
        raise EvaluationError(str(exc)) from None
    if sampled and timed:
        raise EvaluationError("--sampled is not available for a model that reads event times (full ranking only)")
    t = time.perf_counter()
    out: dict[str, Any] = {
        "split": split,
        "protocol": protocol["protocol"] if sessions_protocol else "leave-one-out",
        "queries": len(targets),
        "model": ckpt["model"],
        "dataset": data.name,
    }
    out["full"] = full_rank_eval(
        model.score, hists, targets, data.num_items, model.max_len, exclude_history=exclude, **timed
    )
    out["eval_seconds"] = round(time.perf_counter() - t, 2)
    pop = popularity_scores(s.train, data.num_items)
    if popularity_baseline:
        out["popularity"] = full_rank_eval(
            popularity_score_fn(pop), hists, targets, data.num_items, model.max_len, exclude_history=exclude
        )
    if sampled:
        out["sampled"] = sampled_eval(
            model.score,
            hists,
            targets,
            data.num_items,
            model.max_len,
            popularity=pop if sampled == "popularity" else None,
        )
    return out
