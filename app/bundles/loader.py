"""load_bundle(), the one entry point that reads a bundle directory and picks its class: Bundle
(bundle.py) serves item-id models, TextBundle (text.py) builds on it for bundles whose manifest has
a `text` section (UniSRec). Choosing here, above both, keeps them free of an import circle. And
load_registry(): every bundle of a configuration, or none."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from app.bundles.bundle import Bundle, BundleError, check_bundle_dir
from app.bundles.registry import Registry, UnknownModel
from app.bundles.text import TextBundle


def load_bundle(path: Path | str, ann_threshold: int = 20_000) -> Bundle:
    """Validate manifest, files and checksums, then load. Raises BundleError on any defect."""
    path = Path(path)
    manifest = check_bundle_dir(path)
    cls = TextBundle if manifest.text is not None else Bundle
    return cls.from_checked(path, manifest, ann_threshold)


def load_registry(paths: Sequence[Path | str], default: str | None, ann_threshold: int) -> Registry:
    """Load and validate every bundle; raises BundleError when any is bad (nothing is half-swapped)."""
    if not paths:
        raise BundleError("no bundle given")
    loaded: dict[str, Bundle] = {}
    for p in paths:
        b = load_bundle(Path(p), ann_threshold=ann_threshold)
        if b.name in loaded:
            raise BundleError(f"two bundles are named {b.name!r}")
        loaded[b.name] = b
    reg = Registry(loaded, next(iter(loaded)))
    if default is not None:
        try:
            reg = Registry(loaded, reg.get(default).name)
        except UnknownModel as exc:
            raise BundleError(str(exc)) from exc
    return reg
