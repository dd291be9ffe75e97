"""What an event's type means (SEQREC_EVENT_TYPES and its companions, docs/shop.md).

- the default type (SEQREC_DEFAULT_EVENT_TYPE) is stored as events were before types existed;
- a negative type (SEQREC_NEGATIVE_EVENT_TYPES) is never model input for its user, and its item is
  never recommended to that user again;
- SEQREC_EXCLUDE_TYPES `*` excludes every item of the kept history from the user's lists (seen
  items, as without types); a list of types instead excludes the items of those types only, and
  keeps them excluded beyond the kept history.

The roles are given when an event is stored (the store marks a negative event and adds excluded
items to the user's exclusion set), so changing the settings applies to events stored from then on.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.stores.base import Event

if TYPE_CHECKING:
    from app.settings import Settings


@dataclass(frozen=True)
class EventTypes:
    names: tuple[str, ...]
    default: str
    negative: frozenset[str]
    exclude: frozenset[str] | None  # None (`*`): the kept history's items are excluded (seen items)

    def known(self, type_: str | None) -> bool:
        return type_ is None or type_ in self.names

    @property
    def refusal(self) -> str:
        """The 422 message for an unknown type: the allowed names, never the input."""
        return f"unknown event type; allowed: {', '.join(self.names)} (SEQREC_EVENT_TYPES)"

    @property
    def excludes_seen(self) -> bool:
        """Whether every item of the kept history is kept out of the user's lists (`*`)."""
        return self.exclude is None

    def excluding(self, type_: str) -> bool:
        """Whether an event of this type keeps its item out of the user's lists beyond the history."""
        return type_ in self.negative or (self.exclude is not None and type_ in self.exclude)

    def event(self, user_id: str, item_id: str, ts: float, event_id: str, type_: str | None) -> Event:
        """The stored event; `type_` must be known (None: the default)."""
        t = self.default if type_ is None else type_
        return Event(
            user_id,
            item_id,
            ts,
            event_id,
            None if t == self.default else t,
            negative=t in self.negative,
            exclude=self.exclude is not None and t in self.exclude,
        )

    def split(self, items: Sequence[str], types: Sequence[str] | None) -> tuple[list[int], list[str]]:
        """An anonymous sequence's items and types -> (the positions the model reads, the items kept
        out of the answer beyond `exclude_seen`): negative items are not read and are excluded, as
        are items of SEQREC_EXCLUDE_TYPES."""
        if types is None:  # every item of the default type
            return list(range(len(items))), list(items) if self.excluding(self.default) else []
        read = [n for n, t in enumerate(types) if t not in self.negative]
        away = [i for i, t in zip(items, types, strict=True) if self.excluding(t)]
        return read, away


@functools.cache
def _types(names: tuple[str, ...], default: str, negative: tuple[str, ...], exclude: tuple[str, ...]) -> EventTypes:
    return EventTypes(names, default, frozenset(negative), None if exclude == ("*",) else frozenset(exclude))


def event_types(settings: Settings) -> EventTypes:
    """The deployment's event types (built once per distinct settings)."""
    return _types(
        tuple(settings.event_types),
        settings.default_event_type,
        tuple(settings.negative_event_types),
        tuple(settings.exclude_types),
    )
