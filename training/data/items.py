"""Item text: how a text is composed from fields, and how well a text table covers a catalogue.

No torch here: `seqrec prepare` checks an items file without loading the text stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from training.data.readers import DatasetError

# How the service builds a new item's text from POST /items fields, and how an items file's
# columns become training text: the same shape (title, categories, brand, description, joined
# by spaces), so an item registered at serving time is encoded like the ones trained on.
TEXT_FIELDS = ("title", "categories", "brand", "description")
MIN_TEXT_FRACTION = 0.5


def compose_item_text(fields: dict[str, object]) -> str:
    """title + categories + brand + description, space-joined (lists joined by spaces)."""
    parts: list[str] = []
    for key in TEXT_FIELDS:
        v = fields.get(key)
        if isinstance(v, list | tuple):
            v = " ".join(str(x) for x in v if x)
        if v:
            parts.append(str(v).strip())
    return " ".join(parts)


@dataclass
class TextCoverage:
    matched: int
    total: int
    unmatched: list[str]  # a few catalogue ids without text

    @property
    def fraction(self) -> float:
        return self.matched / max(1, self.total)

    def summary(self, source: str) -> str:
        return f"item text: {self.matched} of {self.total} items ({100 * self.fraction:.1f}%) from {source}"


def text_coverage(item_ids: Sequence[str], text: dict[str, str]) -> TextCoverage:
    missing = [i for i in item_ids if not text.get(i)]
    return TextCoverage(len(item_ids) - len(missing), len(item_ids), missing[:5])


def check_text_coverage(
    item_ids: Sequence[str],
    text: dict[str, str],
    source: str,
    min_fraction: float = MIN_TEXT_FRACTION,
    allow_missing: bool = False,
) -> TextCoverage:
    """Refuse item text that covers under `min_fraction` of the catalogue (unless allowed).

    An item without text is encoded from its id string, which says nothing: a file whose ids
    are, say, row numbers instead of the log's item ids matches nothing and would otherwise
    train on ids alone.
    """
    cov = text_coverage(item_ids, text)
    if cov.fraction < min_fraction and not allow_missing:
        file_ids = list(text)[:3]
        raise DatasetError(
            f"{source}: text for only {cov.matched} of {cov.total} items ({100 * cov.fraction:.1f}%, "
            f"minimum {100 * min_fraction:.0f}%); catalogue ids without text, e.g. "
            f"{', '.join(repr(i) for i in cov.unmatched[:3])}; ids in the items file look like "
            f"{', '.join(repr(i) for i in file_ids)}. Point --items-id-col at the column holding the "
            f"log's item ids, or pass --allow-missing-text to train with ids as text for the rest"
        )
    return cov
