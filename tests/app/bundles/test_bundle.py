"""Bundle loading: a real exported bundle loads and infers like the checkpoint; defects are rejected."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from app.bundles.bundle import Bundle, BundleError


def test_loads_and_matches_torch(bundle_path: Path, tiny_run: Path) -> None:
    from training.batching import pad_left
    from training.train import load_checkpoint

    b = Bundle.load(bundle_path)
    model, ckpt = load_checkpoint(tiny_run / "best.pt")
    assert b.item_ids == list(ckpt["item_ids"]) and b.max_len == 30
    hists = [np.array([1, 2, 3]), np.arange(1, 60)]  # second is longer than max_len: truncated to the newest
    got = b.user_vectors(hists)
    with torch.no_grad():
        ref = model(torch.as_tensor(pad_left([h[-30:] for h in hists]))).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert b.encode([b.item_ids[4], "not-an-item", b.item_ids[0]]).tolist() == [5, 1]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_checksum_mismatch_rejected(bundle_path: Path, tmp_path: Path) -> None:
    bad = _copy(bundle_path, tmp_path / "b")
    pop = np.load(bad / "popularity.npy")
    np.save(bad / "popularity.npy", pop + 1)
    with pytest.raises(BundleError, match=r"checksum mismatch for popularity\.npy"):
        Bundle.load(bad)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.update(format_version=1), r"bundle format 1 is older than this server reads \(2, 3\): re-export"),
        (lambda m: m.update(format_version=4), r"bundle format 4 is newer than this server reads \(2, 3\): upgrade"),
        (lambda m: m.pop("format_version"), "unsupported bundle format None"),
        (lambda m: m["onnx"].update(input_kind="item_vectors"), r"onnx\.input_kind: Input should be 'item_ids'"),
        (lambda m: m.pop("dim"), "dim: Field required"),
        (lambda m: m.update(max_len=0), "max_len: Input should be greater than 0"),
        (lambda m: m.update(num_items=m["num_items"] + 1), r"item_vectors\.npy is"),
    ],
)
def test_bad_manifest_rejected(bundle_path: Path, tmp_path: Path, edit, match: str) -> None:
    bad = _copy(bundle_path, tmp_path / "b")
    m = json.loads((bad / "manifest.json").read_text())
    edit(m)
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=match):
        Bundle.load(bad)


def test_missing_file_and_missing_dir_rejected(bundle_path: Path, tmp_path: Path) -> None:
    bad = _copy(bundle_path, tmp_path / "b")
    (bad / "model.onnx").unlink()
    with pytest.raises(BundleError, match=r"lacks model\.onnx"):
        Bundle.load(bad)
    with pytest.raises(BundleError, match="not a directory"):
        Bundle.load(tmp_path / "nope")


def test_add_items_become_recommendable(bundle_path: Path) -> None:
    b = Bundle.load(bundle_path)
    n = len(b.item_ids)
    user = b.user_vectors([np.array([1, 2])])
    idx = b.add_items(["brand-new"], user * 100)  # aligned with the user: must rank first
    assert idx.tolist() == [n + 1]
    labels, _ = b.index.search(user, 1)
    assert b.external(labels[0]) == ["brand-new"]
    with pytest.raises(BundleError):
        b.add_items(["brand-new"], user)
