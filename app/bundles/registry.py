"""The set of bundles being served: an immutable snapshot, swapped whole on reload, and which
bundle a `?model=` value names. Loading one from bundle directories is app/bundles/loader.py."""

from __future__ import annotations

from dataclasses import dataclass

from app.bundles.bundle import Bundle
from app.bundles.manifest import UnknownModel

__all__ = ["Registry", "UnknownModel"]


@dataclass(frozen=True)
class Registry:
    bundles: dict[str, Bundle]  # by bundle name
    default: str

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
