"""app/bundles/loader.py: load_bundle() picks Bundle or TextBundle from the manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from app.bundles.bundle import Bundle, BundleError
from app.bundles.loader import load_bundle
from app.bundles.text import TextBundle


def test_load_bundle_picks_the_class_from_the_manifest(bundle_path: Path, tmp_path: Path) -> None:
    b = load_bundle(bundle_path)
    assert type(b) is Bundle and b.name == "tiny-sasrec" and b.manifest.onnx.input == "item_seq"
    # A manifest with a text section is a text bundle: Bundle.load refuses it; the files the
    # section names must be in the bundle with their checksums.
    bad = Path(shutil.copytree(bundle_path, tmp_path / "b"))
    m = json.loads((bad / "manifest.json").read_text())
    graph = {"file": "x.onnx", "inputs": ["a", "b"], "output": "o", "dim": 4}
    m["text"] = {
        "tokenizer": "tokenizer.json",
        "text_encoder": graph,
        "adaptor": {"file": "y.onnx", "input": "i", "output": "o", "dim": 16},
        "seq_encoder": {"file": "z.onnx", "inputs": ["v", "m"], "output": "u"},
        "dim_model": 16,
    }
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"no checksum for tokenizer\.json"):
        load_bundle(bad)
    m["files"].update({f: m["files"]["model.onnx"] for f in ("tokenizer.json", "x.onnx", "y.onnx", "z.onnx")})
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"tokenizer\.json is listed in the manifest but missing"):
        load_bundle(bad)
    for f in ("tokenizer.json", "x.onnx", "y.onnx", "z.onnx"):
        shutil.copy(bad / "model.onnx", bad / f)
    with pytest.raises(BundleError, match="is a text bundle"):
        Bundle.load(bad)
    with pytest.raises(BundleError, match=r"cannot load"):  # TextBundle: tokenizer.json is no tokenizer
        load_bundle(bad)
    assert issubclass(TextBundle, Bundle)
