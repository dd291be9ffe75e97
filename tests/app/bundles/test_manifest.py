"""app/bundles/manifest.py: the schema training writes and the service reads, its format check, its weight."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.bundles.manifest import FORMAT_VERSION, BundleError, Manifest, OnnxSpec, parse_manifest, read_manifest

ROOT = Path(__file__).resolve().parents[3]


def _manifest(**over: object) -> dict:
    m = Manifest(
        name="m",
        model="sasrec",
        version="20261201-101500",
        max_len=50,
        dim=64,
        num_items=3416,
        onnx=OnnxSpec(opset=17),
        files={"model.onnx": "0" * 64},
        model_config={"dim": 64, "num_layers": 2},
    )
    raw = json.loads(m.to_json())
    raw.update(over)
    return raw


def test_round_trip_keeps_every_field_and_the_json_names() -> None:
    raw = _manifest()
    assert raw["format_version"] == FORMAT_VERSION == 2
    assert raw["model_config"] == {"dim": 64, "num_layers": 2} and "text" not in raw
    m = parse_manifest(raw)
    assert m.model_config_ == {"dim": 64, "num_layers": 2} and m.onnx.input == "item_seq"
    assert json.loads(m.to_json()) == raw


@pytest.mark.parametrize(
    ("version", "match"),
    [
        (1, r"^bundle format 1 is older than this server reads \(2, 3\): re-export the checkpoint with `seqrec export"),
        (4, r"^bundle format 4 is newer than this server reads \(2, 3\): upgrade the server"),
        (3, r"format_version must be 3 exactly when the bundle reads event times"),
        ("2", r"unsupported bundle format '2' \(no integer format_version\)"),
        (True, "unsupported bundle format True"),
    ],
)
def test_other_formats_are_refused_saying_what_to_do(version: object, match: str) -> None:
    with pytest.raises(BundleError, match=match):
        parse_manifest(_manifest(format_version=version))


def test_an_older_format_is_refused_before_its_schema_is_read() -> None:
    # A format-1 manifest need not fit today's schema: the message is about the format, not a field.
    old = {"format_version": 1, "model": "sasrec", "max_len": 50, "dim": 64, "num_items": 10, "files": {}}
    with pytest.raises(BundleError, match="bundle format 1 is older"):
        parse_manifest(old)


def test_schema_errors_name_every_bad_field() -> None:
    raw = _manifest(dim=-1)
    del raw["onnx"]["opset"]
    with pytest.raises(BundleError) as exc:
        parse_manifest(raw)
    msg = str(exc.value)
    assert msg.startswith("manifest.json is invalid:") and "dim: Input should be greater than 0" in msg
    assert "onnx.opset: Field required" in msg
    with pytest.raises(BundleError, match="is not an object"):
        parse_manifest([1, 2])


def test_unknown_fields_are_ignored_so_an_added_optional_field_keeps_old_readers_working() -> None:
    m = parse_manifest(_manifest(future_section={"file": "f.npy"}, onnx={"opset": 17, "new_flag": True}))
    assert m.name == "m" and not hasattr(m, "future_section")


def test_read_manifest_reports_broken_json(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text('{"format_version": 2, "model": ')
    with pytest.raises(BundleError, match="not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps(_manifest()))
    assert read_manifest(tmp_path).num_items == 3416


def test_importing_the_manifest_pulls_in_no_serving_or_training_stack() -> None:
    # training/export.py imports app.bundles.manifest: it must not drag onnxruntime, FastAPI, Redis or torch along.
    code = (
        "import sys, app.bundles.manifest; heavy = {'onnxruntime', 'fastapi', 'starlette', 'redis', 'torch', 'numpy'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
