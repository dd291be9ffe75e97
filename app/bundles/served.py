"""The set of bundles being served (an immutable snapshot swapped whole on reload) and
load_bundle(), the one entry point that reads a bundle directory and picks its class: Bundle
(bundle.py) serves item-id models, TextBundle (text.py) builds on it for bundles whose manifest has
a `text` section (UniSRec). Choosing here, above both, keeps them free of an import circle."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from app.bundles.bundle import Bundle, BundleError, check_bundle_dir
from app.bundles.text import TextBundle


def load_bundle(path: Path | str, ann_threshold: int = 20_000) -> Bundle:
    """Validate manifest, files and checksums, then load. Raises BundleError on any defect."""
    path = Path(path)
    manifest = check_bundle_dir(path)
    cls = TextBundle if manifest.text is not None else Bundle
    return cls.from_checked(path, manifest, ann_threshold)


class UnknownModel(LookupError):
    pass


@dataclass(frozen=True)
class Registry:
    bundles: dict[str, Bundle]  # by bundle name
    default: str

    @classmethod
    def load(cls, paths: Sequence[Path | str], default: str | None, ann_threshold: int) -> Registry:
        """Load and validate every bundle; raises BundleError when any is bad (nothing is half-swapped)."""
        if not paths:
            raise BundleError("no bundle given")
        loaded: dict[str, Bundle] = {}
        for p in paths:
            b = load_bundle(Path(p), ann_threshold=ann_threshold)
            if b.name in loaded:
                raise BundleError(f"two bundles are named {b.name!r}")
            loaded[b.name] = b
        reg = cls(loaded, next(iter(loaded)))
        if default is not None:
            try:
                reg = cls(loaded, reg.get(default).name)
            except UnknownModel as exc:
                raise BundleError(str(exc)) from exc
        return reg

    def get(self, name: str | None) -> Bundle:
        """By bundle name; else by model kind: the default bundle when it has that kind, else the one
        bundle that has it. A kind that several bundles share (and the default does not) is ambiguous:
        refused with the bundles to choose from. None = the default bundle."""
        if name is None:
            return self.bundles[self.default]
        if name in self.bundles:
            return self.bundles[name]
        if self.bundles[self.default].model == name:
            return self.bundles[self.default]
        kind = [b for b in self.bundles.values() if b.model == name]
        if len(kind) == 1:
            return kind[0]
        if kind:
            raise UnknownModel(
                f"ambiguous model kind: several bundles serve it; name one of {', '.join(sorted(b.name for b in kind))}"
            )
        # The name is not echoed back (it is client input); the valid names are.
        raise UnknownModel(f"unknown model; serving: {', '.join(self.names())}")

    def names(self) -> list[str]:
        """Every value `get` accepts: the bundle names and the model kinds that name one bundle."""
        kinds = {b.model for b in self.bundles.values()}
        return sorted(set(self.bundles) | {k for k in kinds if self._kind_resolves(k)})

    def _kind_resolves(self, kind: str) -> bool:
        if self.bundles[self.default].model == kind:
            return True
        return sum(b.model == kind for b in self.bundles.values()) == 1
