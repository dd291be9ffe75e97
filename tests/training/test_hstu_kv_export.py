"""An HSTU bundle carries its cached step (step.onnx) and says so in the manifest (`incremental`, kind
kv_cache): float16 by default, float32 through the zoo's hook; the section round-trips through the
manifest, a bad one is refused naming the field, and a manifest without it still reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from app.bundles.manifest import BundleError, KvCacheSpec, Manifest, parse_manifest
from training.data import SeqData

MODEL = {"max_len": 20, "dim": 16, "num_heads": 2}
TRAIN = {"epochs": 1, "batch_size": 64, "max_users": 200, "loss": "ce"}


@pytest.fixture(scope="module")
def run(synthetic: SeqData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.train import train

    out = tmp_path_factory.mktemp("hstu-kv-run")
    train("hstu", synthetic, out, MODEL, TRAIN, progress=False)
    return out


@pytest.fixture(scope="module")
def exported(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.export import export_bundle

    return export_bundle(run / "best.pt", tmp_path_factory.mktemp("hstu-kv-art"), name="kv16")


def test_the_bundle_carries_a_float16_kv_cache_step(exported: Path) -> None:
    m = json.loads((exported / "manifest.json").read_text())
    inc = m["incremental"]
    assert inc["kind"] == "kv_cache" and inc["cache_dtype"] == "float16" and inc["times"] is True
    assert inc["inputs"] == ["cache_k", "cache_v", "cache_times", "item_seq", "time_seq"]
    assert inc["cache_shape"] == [2, 16, 16] and inc["max_len"] == m["max_len"] == 20
    assert "step.onnx" in m["files"] and (exported / "step.onnx").is_file()
    step = ort.InferenceSession(str(exported / "step.onnx"), providers=["CPUExecutionProvider"])
    assert [i.type for i in step.get_inputs()][:2] == ["tensor(float16)"] * 2


def test_float32_through_the_zoo_hook_is_exact(
    run: Path, tmp_path: Path, synthetic: SeqData, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.zoo
    from training.export import export_bundle

    monkeypatch.setattr(training.zoo, "HSTU_CACHE_DTYPE", "float32")
    bundle = export_bundle(run / "best.pt", tmp_path, name="kv32")
    inc = json.loads((bundle / "manifest.json").read_text())["incremental"]
    assert inc["cache_dtype"] == "float32" and inc["parity_max_abs_diff"] <= 1e-4
    step = ort.InferenceSession(str(bundle / "step.onnx"), providers=["CPUExecutionProvider"])
    full = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    items = synthetic.sequence(0)[:20].astype(np.int64)
    times = synthetic.times(0)[:20].astype(np.int64)  # type: ignore[union-attr]
    feed = {
        "cache_k": np.zeros((2, 1, 0, 16), np.float32),
        "cache_v": np.zeros((2, 1, 0, 16), np.float32),
        "cache_times": np.zeros((1, 0), np.int64),
    }
    for cut in ((0, 12), (12, 13), (13, len(items))):  # a prefix, one event, the rest
        feed |= {"item_seq": items[None, cut[0] : cut[1]], "time_seq": times[None, cut[0] : cut[1]]}
        k, v, vec = step.run(inc["outputs"], feed)
        feed |= {"cache_k": k, "cache_v": v, "cache_times": times[None, : cut[1]]}
    want = full.run(["user_vec"], {"item_seq": items[None], "time_seq": times[None]})[0]
    assert np.abs(vec - want).max() <= 1e-4


def test_the_section_round_trips_and_a_bad_one_is_refused(exported: Path) -> None:
    raw = json.loads((exported / "manifest.json").read_text())
    m = parse_manifest(raw)
    assert isinstance(m.incremental, KvCacheSpec) and "step.onnx" in m.named_files()
    assert json.loads(m.to_json()) == raw
    assert parse_manifest(json.loads(m.to_json())) == m
    bad = {
        "times": ({"times": False}, "times=False takes 3 inputs"),
        "max_len": ({"max_len": 40}, "incremental.max_len 40 is not the bundle's max_len 20"),
        "dtype": ({"cache_dtype": "bfloat16"}, "incremental.kv_cache.cache_dtype"),
        "kind": ({"kind": "kv_cache_v2"}, "incremental"),
        "shape": ({"cache_shape": [2, 0, 16]}, "cache_shape must be positive"),
    }
    for change, match in bad.values():
        with pytest.raises(BundleError, match=match):
            parse_manifest({**raw, "incremental": {**raw["incremental"], **change}})
    untimed = {**raw["incremental"], "times": False, "inputs": ["cache_k", "cache_v", "item_seq"]}
    with pytest.raises(BundleError, match=r"times must be true exactly when model\.onnx reads times"):
        parse_manifest({**raw, "incremental": untimed})


def test_manifests_without_the_section_or_with_a_recurrent_state_still_read(exported: Path) -> None:
    raw = json.loads((exported / "manifest.json").read_text())
    older = {k: v for k, v in raw.items() if k != "incremental"}
    assert parse_manifest(older).incremental is None
    rnn = {
        "kind": "rnn_state",
        "file": "step.onnx",
        "inputs": ["state", "item_seq"],
        "outputs": ["state_out", "user_vec"],
        "state_shape": [1, 8],
    }
    got = Manifest.model_validate({**raw, "incremental": rnn}).incremental
    assert got is not None and got.kind == "rnn_state" and got.state_shape == [1, 8]
