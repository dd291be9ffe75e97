"""load_bundle(): the one entry point that reads a bundle directory and picks its class.

Bundle (app/bundle.py) serves item-id models; TextBundle (app/text_bundle.py) builds on it for
bundles whose manifest has a `text` section (UniSRec). Choosing here, above both, keeps the two
modules free of an import circle.
"""

from __future__ import annotations

from pathlib import Path

from app.bundle import Bundle, check_bundle_dir
from app.text_bundle import TextBundle


def load_bundle(path: Path | str, ann_threshold: int = 20_000) -> Bundle:
    """Validate manifest, files and checksums, then load. Raises BundleError on any defect."""
    path = Path(path)
    manifest = check_bundle_dir(path)
    cls = TextBundle if manifest.text is not None else Bundle
    return cls.from_checked(path, manifest, ann_threshold)
