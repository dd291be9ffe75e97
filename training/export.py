"""Export a checkpoint as an artifact bundle (the only contract with the service).

bundle/
  manifest.json      app.bundles.manifest.Manifest: format version, model, hyper-parameters, metrics,
                     fingerprints, sha256 of files (the schema the service validates on load)
  model.onnx         item_seq int64 [batch, len] (0 = padding) -> user_vec float32 [batch, dim];
                     a model that reads event times also takes time_seq int64 [batch, len]
                     (unix seconds, 0 where item_seq pads), named in the manifest (onnx.time_input)
                     a model that reads event types also takes event_type int64 [batch, len] (the
                     type's position in the manifest's event_types.names + 1, 0 where item_seq pads)
  model.ts           the same as TorchScript (torch.jit is deprecated in torch 2.13: see model.pt2)
  model.pt2          the same as a torch.export program, on item_seq left-padded to exactly max_len
                     (batch dynamic); torch.export.load(path).module() runs it (docs/recipes.md)
  item_vectors.npy   float32 [num_items, dim]: row r is item index r + 1 (padding row dropped)
  item_ids.json      external id of each row
  popularity.npy     float32 [num_items]: training counts, the fallback ranking
  item_text.json     optional: external id -> text (titles for the demo page)
  clusters.npy       int32 [num_items]: k-means cluster of each item (diversity, training/clusters.py)
  item_vectors_layers4.npy  optional (layer_vectors=True, BERT4Rec): a second space for similar items
  ablation.onnx      optional (models with `ablations`, e.g. SASRec): the leave-one-out user vectors
                     explanations need, in one cheaper graph (training/ablation.py)
  step.onnx          GRU4Rec, LRURec: (state float32 [layers, batch, H], item_seq int64 [batch, T]) ->
                     (state_out, user_vec): the recurrent state advanced by T items (the manifest's `incremental`,
                     kind rnn_state); HSTU: (cache_k, cache_v [layers, batch, n, H d], [cache_times], item_seq
                     [, time_seq]) -> (cache_k_out, cache_v_out, user_vec): every layer's keys and values extended
                     by the new events (kind kv_cache, float16 cache by default)

The bundle is written into a temporary sibling directory and renamed into place, so a
reader never sees half a bundle. Export fails, and writes nothing, when ONNX Runtime or
TorchScript disagree with eager PyTorch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from app.bundles.manifest import (
    FORMAT_VERSION,
    TIMED_FORMAT_VERSION,
    IncrementalSpec,
    KvCacheSpec,
    Manifest,
    OnnxSpec,
)
from models.hstu import HSTU
from models.layers import SeqRecModel
from training.ablation import write_ablation_graph
from training.checkpoint import load_checkpoint
from training.clusters import write_clusters, write_layer_vectors
from training.errors import ExportError
from training.tasks import reads_types

BUNDLE_FORMAT = FORMAT_VERSION
ONNX_OPSET = 17
INPUT_NAME = "item_seq"
TIME_INPUT_NAME = "time_seq"
TYPE_INPUT_NAME = "event_type"
OUTPUT_NAME = "user_vec"
PARITY_TOL = 1e-4


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def random_histories(num_items: int, max_len: int, seed: int = 0) -> list[np.ndarray]:
    """Parity probes: lengths 1, short, full and over-long, so padding and truncation are exercised."""
    rng = np.random.default_rng(seed)
    lens = [1, 2, 5, max(1, max_len // 2), max_len, max_len + 7]
    return [rng.integers(1, num_items + 1, size=n) for n in lens]


def random_times(lengths: list[int], seed: int = 1) -> list[np.ndarray]:
    """Parity probes' event times: unix seconds, non-decreasing, gaps from equal to months apart."""
    rng = np.random.default_rng(seed)
    gaps = np.array([0, 1, 7, 45, 600, 3_600, 86_400, 2_600_000])
    return [978_300_000 + np.cumsum(rng.choice(gaps, size=n)).astype(np.int64) for n in lengths]


def model_inputs(model: SeqRecModel, item_seq: np.ndarray, times: list[np.ndarray] | None = None) -> tuple:
    """The graph's positional inputs for a left-padded (B, L) batch: (item_seq[, time_seq][, event_type])."""
    x = torch.as_tensor(item_seq)
    typed = type_inputs(model, item_seq)
    if not model.uses_times:
        return (x, *typed)
    from training.batching import pad_left

    if times is None:  # any non-decreasing times where items are, 0 where they pad
        times = random_times([int(n) for n in (item_seq != 0).sum(1)])
    t = torch.as_tensor(pad_left(times, item_seq.shape[1]))
    return (x, t, *typed)


def type_inputs(model: SeqRecModel, item_seq: np.ndarray, seed: int = 2) -> tuple:
    """() for a model that reads no event types; else (event_type,): random type ids 1..num_types
    where items are, 0 where they pad, as the service feeds them."""
    if not reads_types(model):
        return ()
    ids = np.random.default_rng(seed).integers(1, model.cfg.num_types + 1, size=item_seq.shape)  # type: ignore[attr-defined]
    return (torch.as_tensor(np.where(item_seq != 0, ids, 0).astype(np.int64)),)


def type_section(model: SeqRecModel, ckpt: dict[str, Any]) -> dict[str, Any]:
    """The manifest's `event_types` for a model that reads types: its input and the data's type
    names in the model's order (type id = position + 1)."""
    names = ckpt.get("type_names")
    if not names or len(names) != model.cfg.num_types:  # type: ignore[attr-defined]
        raise ExportError(
            f"the model reads {model.cfg.num_types} event types but the checkpoint names "  # type: ignore[attr-defined]
            f"{len(names or [])}: retrain it on typed data"
        )
    return {"input": TYPE_INPUT_NAME, "names": list(names)}


def _names(model: SeqRecModel) -> list[str]:
    names = [INPUT_NAME, TIME_INPUT_NAME] if model.uses_times else [INPUT_NAME]
    return [*names, TYPE_INPUT_NAME] if reads_types(model) else names


def export_onnx(model: SeqRecModel, path: Path, example: torch.Tensor | tuple) -> None:
    example = example if isinstance(example, tuple) else (example,)
    names = _names(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            example,
            str(path),
            input_names=names,
            output_names=[OUTPUT_NAME],
            dynamic_axes={**{n: {0: "batch", 1: "length"} for n in names}, OUTPUT_NAME: {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )


def export_torchscript(model: SeqRecModel, path: Path, example: torch.Tensor | tuple) -> None:
    example = example if isinstance(example, tuple) else (example,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.trace(model, example, check_trace=False)
    ts.save(str(path))


def export_program(model: SeqRecModel, path: Path) -> float | None:
    """The model as a torch.export program (`.pt2`), the successor of TorchScript; returns the
    max |program - eager| on padded probes, or None (and no file) where torch.export cannot
    capture the model. The length is fixed at max_len: the models' truncation and padding
    branches specialise a dynamic length, so callers left-pad (0) or cut to max_len first."""
    from torch.export import Dim

    from training.batching import pad_left

    probes = [h[-model.max_len :] for h in random_histories(model.num_items, model.max_len)]
    x = model_inputs(model, pad_left(probes, model.max_len))  # (B, max_len), newest last [+ times]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dyn = tuple({0: Dim.DYNAMIC} for _ in x)
            program = torch.export.export(model, tuple(a[:2] for a in x), dynamic_shapes=dyn)
        torch.export.save(program, str(path))
        loaded = torch.export.load(str(path)).module()
        with torch.no_grad():
            worst = max(
                float((loaded(*(a[:n] for a in x)) - model(*(a[:n] for a in x))).abs().max()) for n in (len(x[0]), 1)
            )
    except Exception as exc:  # torch.export is optional in a bundle: ONNX and TorchScript remain
        reason = f"{type(exc).__name__}: {exc}"
        warnings.warn(f"no model.pt2: torch.export could not capture the model ({reason})", stacklevel=2)
        path.unlink(missing_ok=True)
        return None
    return worst


STEP_FILE = "step.onnx"
STEP_INPUTS = ["state", "item_seq"]
STEP_OUTPUTS = ["state_out", "user_vec"]


def export_step(
    model: SeqRecModel, tmp: Path, onnx_path: Path, step_module: torch.nn.Module, state_shape: tuple[int, int]
) -> IncrementalSpec:
    """Write step.onnx and check it: a history split in two steps equals model.onnx on the whole.

    step_module maps (state (layers, B, H), item_seq (B, T)) to (state', user_vec) for a state of
    `state_shape` = (layers, H): the model's ModelSpec.recurrent_step gives both (GRU4Rec, LRURec)."""
    import onnxruntime as ort

    step = step_module.eval()
    layers, hid = state_shape
    example = (torch.zeros(layers, 2, hid), torch.as_tensor(np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int64)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            step,
            example,
            str(tmp / STEP_FILE),
            input_names=STEP_INPUTS,
            output_names=STEP_OUTPUTS,
            dynamic_axes={
                "state": {1: "batch"},
                "item_seq": {0: "batch", 1: "length"},
                "state_out": {1: "batch"},
                "user_vec": {0: "batch"},
            },
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    sess = ort.InferenceSession(str(tmp / STEP_FILE), providers=["CPUExecutionProvider"])
    full = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for h in random_histories(model.num_items, model.max_len, seed=1):
        h = h[-model.max_len :][None, :].astype(np.int64)  # (1, L)
        ref = full.run([OUTPUT_NAME], {INPUT_NAME: h})[0]
        state = np.zeros((layers, 1, hid), np.float32)
        cut = max(1, h.shape[1] // 2)
        state, _ = sess.run(STEP_OUTPUTS, {"state": state, "item_seq": h[:, :cut]})
        for part in (h[:, cut : cut + 1], h[:, cut + 1 :]):  # one event, then the rest
            if part.shape[1]:
                state, vec = sess.run(STEP_OUTPUTS, {"state": state, "item_seq": part})
        if h.shape[1] == 1:
            vec = sess.run(STEP_OUTPUTS, {"state": np.zeros_like(state), "item_seq": h})[1]
        worst = max(worst, float(np.abs(vec - ref).max()))
    if worst > PARITY_TOL:
        raise ExportError(f"{STEP_FILE} disagrees with model.onnx: max |diff| {worst:.2e}")
    return IncrementalSpec(
        kind="rnn_state",
        file=STEP_FILE,
        inputs=STEP_INPUTS,
        outputs=STEP_OUTPUTS,
        state_shape=[layers, hid],
        parity_max_abs_diff=worst,
    )


HSTU_STEP_OUTPUTS = ["cache_k_out", "cache_v_out", OUTPUT_NAME]
# A float16 cache is half the bytes; its rounding moves the user vector (norm 1 / temperature, 20 at
# the reference's 0.05) by ~1e-5 of its norm, so its check allows 5e-3.
HSTU_CACHE_TOL = {"float32": PARITY_TOL, "float16": 5e-3}


def hstu_step_inputs(model: HSTU) -> list[str]:
    """step.onnx's inputs: the cache, then the new events (times only where the model reads them)."""
    if model.uses_times:
        return ["cache_k", "cache_v", "cache_times", INPUT_NAME, TIME_INPUT_NAME]
    return ["cache_k", "cache_v", INPUT_NAME]


class HSTUStep(torch.nn.Module):
    """HSTU.step as a graph: (cache_k (layers, B, n, H dqk), cache_v (layers, B, n, H dv)[, cache_times
    (B, n)], item_seq (B, m)[, time_seq (B, m)]) -> (cache_k_out, cache_v_out (n + m events), user_vec).
    With half=True the cache enters and leaves as float16 (the step itself runs in float32)."""

    def __init__(self, model: HSTU, half: bool = False) -> None:
        super().__init__()
        self.model = model
        self.half = half

    def forward(self, cache_k: torch.Tensor, cache_v: torch.Tensor, *new: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cache_k, cache_v = cache_k.float(), cache_v.float()
        if self.model.uses_times:
            cache_times, item_seq, time_seq = new
            k, v, vec = self.model.step(cache_k, cache_v, item_seq, cache_times, time_seq)
        else:
            k, v, vec = self.model.step(cache_k, cache_v, new[0])
        return (k.half(), v.half(), vec) if self.half else (k, v, vec)


def export_hstu_step(model: HSTU, path: Path, cache_dtype: str = "float32") -> dict[str, Any]:
    """Write HSTU's cached step as `path` (step.onnx) and check it with ONNX Runtime: each probe
    history encoded from an empty cache in three steps (a prefix, one event, the rest) ends with
    the user vector eager `forward` gives on the whole history (within HSTU_CACHE_TOL). Returns what
    a manifest would say of it (file, inputs, outputs, per-layer cache widths, dtype, parity). The
    window rule is the caller's: n + m <= max_len, else rebuild from the newest max_len events."""
    import onnxruntime as ort

    if cache_dtype not in HSTU_CACHE_TOL:
        raise ExportError(f"cache_dtype must be one of {', '.join(HSTU_CACHE_TOL)}, got {cache_dtype!r}")
    dtype = np.float16 if cache_dtype == "float16" else np.float32
    model = model.eval()
    names = hstu_step_inputs(model)
    empty = model.empty_cache(2)
    tdtype = torch.float16 if cache_dtype == "float16" else torch.float32
    pad = tuple(torch.zeros(c.shape[0], 2, 3, c.shape[-1], dtype=tdtype) for c in (empty.k, empty.v))
    items = torch.as_tensor(np.array([[1, 2], [3, 4]], dtype=np.int64))
    example: tuple[torch.Tensor, ...] = (*pad, items)
    if model.uses_times:
        example = (*pad, torch.full((2, 3), 978_300_000, dtype=torch.int64), items, torch.full_like(items, 978_300_100))
    axes = {
        "cache_k": {1: "batch", 2: "cached"},
        "cache_v": {1: "batch", 2: "cached"},
        "cache_times": {0: "batch", 1: "cached"},
    }
    axes |= {INPUT_NAME: {0: "batch", 1: "new"}, TIME_INPUT_NAME: {0: "batch", 1: "new"}}
    axes |= {
        "cache_k_out": {1: "batch", 2: "total"},
        "cache_v_out": {1: "batch", 2: "total"},
        OUTPUT_NAME: {0: "batch"},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            HSTUStep(
                model, half=cache_dtype == "float16"
            ).eval(),  # a wrapper in training mode would leave the model in it
            example,
            str(path),
            input_names=names,
            output_names=HSTU_STEP_OUTPUTS,
            dynamic_axes={k: v for k, v in axes.items() if k in names or k in HSTU_STEP_OUTPUTS},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    hists = [h[-model.max_len :] for h in random_histories(model.num_items, model.max_len, seed=2)]
    worst = 0.0
    for h, t in zip(hists, random_times([len(h) for h in hists], seed=3), strict=True):
        feed = {"cache_k": empty.k[:, :1].numpy().astype(dtype), "cache_v": empty.v[:, :1].numpy().astype(dtype)}
        if model.uses_times:
            feed["cache_times"] = np.zeros((1, 0), np.int64)
        cut = max(1, len(h) // 2)
        for a, b in ((0, cut), (cut, cut + 1), (cut + 1, len(h))):
            if a >= min(b, len(h)):
                continue
            feed[INPUT_NAME] = h[None, a:b].astype(np.int64)
            if model.uses_times:
                feed[TIME_INPUT_NAME] = t[None, a:b]
            k, v, vec = sess.run(HSTU_STEP_OUTPUTS, {n: feed[n] for n in names})
            feed["cache_k"], feed["cache_v"] = k, v
            if model.uses_times:
                feed["cache_times"] = t[None, :b]
        with torch.no_grad():
            ref = model(*model_inputs(model, h[None].astype(np.int64), [t])).numpy()
        worst = max(worst, float(np.abs(vec - ref).max()))
    if worst > HSTU_CACHE_TOL[cache_dtype]:
        raise ExportError(f"{path.name} disagrees with the eager model: max |diff| {worst:.2e}")
    return {
        "file": path.name,
        "inputs": names,
        "outputs": HSTU_STEP_OUTPUTS,
        "cache_shape": [len(model.layers), model.cfg.num_heads * model.cfg.dqk, model.cfg.num_heads * model.cfg.dv],
        "cache_dtype": cache_dtype,
        "max_len": model.max_len,
        "parity_max_abs_diff": worst,
    }


def export_kv_cache(tmp: Path, model: HSTU, cache_dtype: str = "float16") -> KvCacheSpec:
    """step.onnx in the bundle directory `tmp`, checked (`export_hstu_step`), as the manifest's
    `incremental` section: what the service needs to keep and extend a per-user cache."""
    spec = export_hstu_step(model, tmp / STEP_FILE, cache_dtype)
    return KvCacheSpec(kind="kv_cache", times=model.uses_times, **spec)


def check_parity(model: SeqRecModel, onnx_path: Path, ts_path: Path, num_items: int) -> dict[str, float]:
    """Max |ONNX - eager| and |TorchScript - eager| over padded, length-1 and over-long inputs."""
    import onnxruntime as ort

    from training.batching import pad_left

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ts = torch.jit.load(str(ts_path))
    hists = random_histories(num_items, model.max_len)
    times = random_times([len(h) for h in hists])
    worst = {"onnx": 0.0, "torchscript": 0.0}
    # one padded batch + each alone
    probes = [(pad_left(hists), times)] + [(pad_left([h]), [t]) for h, t in zip(hists, times, strict=True)]
    names = _names(model)
    with torch.no_grad():
        for arr, tms in probes:
            x = model_inputs(model, arr, tms)
            ref = model(*x).numpy()
            got_onnx = sess.run([OUTPUT_NAME], {n: a.numpy() for n, a in zip(names, x, strict=True)})[0]
            got_ts = ts(*x).numpy()
            worst["onnx"] = max(worst["onnx"], float(np.abs(got_onnx - ref).max()))
            worst["torchscript"] = max(worst["torchscript"], float(np.abs(got_ts - ref).max()))
    return worst


def export_bundle(
    checkpoint: Path,
    out_root: Path,
    name: str | None = None,
    item_text: dict[str, str] | None = None,
    metrics: dict[str, Any] | None = None,
    layer_vectors: bool = False,
    program: bool = True,
) -> Path:
    """Write a verified bundle under out_root; returns its path.

    layer_vectors: also write the four-layer item representation (models with a bidirectional
    encoder only; ExportError otherwise). program: also write model.pt2 (torch.export), which the
    service does not read; it is most of a small model's export time (2-16 s on a CPU)."""
    model, ckpt = load_checkpoint(checkpoint, "cpu")
    model.eval()
    kind = ckpt["model"]
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    name = name or f"{kind}-{ckpt['dataset']}-{stamp}"
    out_root.mkdir(parents=True, exist_ok=True)
    final = out_root / name
    if final.exists():
        raise ExportError(f"{final} already exists")
    if metrics is None:
        final_json = Path(checkpoint).parent / "final.json"
        metrics = json.loads(final_json.read_text()) if final_json.is_file() else {"valid": ckpt.get("valid")}

    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_root))
    try:
        num_items = model.num_items
        example = model_inputs(model, np.array([[0, 0, 1, 2], [3, 4, 5, 6]], dtype=np.int64))
        export_onnx(model, tmp / "model.onnx", example)
        export_torchscript(model, tmp / "model.ts", example)
        parity = check_parity(model, tmp / "model.onnx", tmp / "model.ts", num_items)
        program_diff = export_program(model, tmp / "model.pt2") if program else None
        if program_diff is not None:
            parity["torch_export"] = program_diff
        if max(parity.values()) > PARITY_TOL:
            raise ExportError(f"exported graphs disagree with eager PyTorch: {parity}")

        with torch.no_grad():
            table = model.item_vectors().detach().float().numpy()[1 : num_items + 1]  # (N, D')
        np.save(tmp / "item_vectors.npy", np.ascontiguousarray(table, dtype=np.float32))
        pop = np.asarray(ckpt["popularity"], dtype=np.float32)[1 : num_items + 1]
        np.save(tmp / "popularity.npy", pop)
        item_ids = list(ckpt["item_ids"])
        (tmp / "item_ids.json").write_text(json.dumps(item_ids))
        from training.zoo import get_spec, resolve, transform_spec

        extra_manifest: dict[str, Any] = {}
        spec = get_spec(kind)
        history_transform = transform_spec(kind, model.cfg, resolve(kind, None, None, ckpt.get("task_config"))[2])
        if history_transform is not None:
            extra_manifest["history_transform"] = history_transform
        if spec.export_extra is not None:
            # Model-specific graphs (e.g. UniSRec: text encoder, adaptor, sequence encoder).
            extra_manifest.update(spec.export_extra(model, tmp, ckpt))
        if spec.recurrent_step is not None:  # a recurrent user state, served incrementally (app/serving/usercache.py)
            extra_manifest["incremental"] = export_step(model, tmp, tmp / "model.onnx", *spec.recurrent_step(model))
        if spec.kv_cache is not None:  # per-user keys and values, extended by each new event (the same module)
            extra_manifest["incremental"] = export_kv_cache(tmp, *spec.kv_cache(model))
        if reads_types(model):  # model.onnx's event_type input, and the names its ids stand for
            extra_manifest["event_types"] = type_section(model, ckpt)
        extra_manifest["clusters"] = write_clusters(tmp, table)
        # The graph reads items only: a bundle that reads times (or transforms histories) has none.
        timed = getattr(model, "uses_times", False) or history_transform is not None
        ablation = None if timed else write_ablation_graph(model, tmp, ONNX_OPSET)  # None: batch model.onnx
        if ablation is not None:
            if ablation["parity_max_abs_diff"] > PARITY_TOL:
                raise ExportError(f"ablation.onnx disagrees with the model's own ablations: {ablation}")
            extra_manifest["ablation"] = ablation
        if layer_vectors:
            try:
                extra_manifest["item_spaces"] = write_layer_vectors(tmp, model)
            except ValueError as exc:
                raise ExportError(f"layer_vectors: {exc}") from exc
        if item_text:
            (tmp / "item_text.json").write_text(json.dumps({i: item_text[i] for i in item_ids if i in item_text}))

        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        # Validated here, at write time: an export that the service would refuse fails now.
        try:
            manifest = Manifest.model_validate(
                {
                    "format_version": TIMED_FORMAT_VERSION
                    if model.uses_times or history_transform is not None
                    else BUNDLE_FORMAT,
                    "name": name,
                    "model": kind,
                    "version": stamp,
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "dataset": ckpt["dataset"],
                    "data_fingerprint": ckpt["data_fingerprint"],
                    "model_config": ckpt["model_config"],
                    "train_config": ckpt["train_config"],
                    "max_len": model.max_len,
                    "dim": int(table.shape[1]),
                    "num_items": num_items,
                    "metrics": metrics,
                    "onnx": OnnxSpec(
                        input=INPUT_NAME,
                        output=OUTPUT_NAME,
                        opset=ONNX_OPSET,
                        time_input=TIME_INPUT_NAME if model.uses_times else None,
                    ),
                    "parity_max_abs_diff": parity,
                    "files": files,
                    **extra_manifest,
                }
            )
        except ValidationError as exc:
            raise ExportError(f"the bundle manifest does not validate: {exc}") from exc
        (tmp / "manifest.json").write_text(manifest.to_json())
        os.chmod(tmp, 0o755)
        os.rename(tmp, final)  # atomic on one filesystem
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
