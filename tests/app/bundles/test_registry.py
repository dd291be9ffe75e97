"""Which bundle a `?model=` value names (app/bundles/registry.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from app.bundles.registry import Registry, UnknownModel


def registry(default: str, **kinds: str) -> Registry:
    bundles: dict[str, Any] = {name: SimpleNamespace(name=name, model=kind) for name, kind in kinds.items()}
    return Registry(bundles, default)


def test_a_kind_names_the_default_bundle_when_it_has_that_kind() -> None:
    reg = registry("sasrec-b", **{"sasrec-a": "sasrec", "sasrec-b": "sasrec", "text": "unisrec"})
    assert reg.get("sasrec").name == "sasrec-b"
    assert reg.get("unisrec").name == "text"
    assert reg.names() == ["sasrec", "sasrec-a", "sasrec-b", "text", "unisrec"]


def test_a_kind_several_bundles_share_is_ambiguous_and_names_them() -> None:
    # The A/B set-up of the live-loop docs: two SASRec bundles beside a UniSRec default.
    reg = registry("text", **{"sasrec-a": "sasrec", "sasrec-b": "sasrec", "text": "unisrec"})
    with pytest.raises(UnknownModel, match=r"ambiguous model kind.*name one of sasrec-a, sasrec-b"):
        reg.get("sasrec")
    # The list of accepted names never holds a name that is refused.
    assert reg.names() == ["sasrec-a", "sasrec-b", "text", "unisrec"]
    for name in reg.names():
        assert reg.get(name) is not None
    with pytest.raises(UnknownModel, match=r"^unknown model; serving: sasrec-a, sasrec-b, text, unisrec$"):
        reg.get("gru4rec")
