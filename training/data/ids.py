"""Ids as the service will see them, checked when a log is prepared.

The product has one id rule (`app.ids`: what `POST /events` accepts). A model trained on an id the
service refuses recommends something no client can send back, so `prepare` applies the same rule
to every user and item id. Also here: the opt-in mapping that turns refused ids into accepted ones
(`--fix-ids`), ids that differ only by their Unicode normalisation form, and placeholder user ids
that stand for "unknown user".
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from urllib.parse import quote

from app.ids import MAX_ID_LENGTH, check_id, valid_id

# User ids that mean "no user" in exported logs (compared case-insensitively, whitespace stripped).
NULL_IDS = frozenset({"", "na", "n/a", "#n/a", "nan", "null", "none", "nil", "undefined", "-1"})
NULL_POLICIES = ("warn", "drop", "session")


def id_problem(v: str) -> str | None:
    """Why the service would refuse `v` as an id (the rule's own message), or None."""
    if not v:
        return "id is empty"
    if len(v) > MAX_ID_LENGTH:
        return f"id is {len(v)} characters long; at most {MAX_ID_LENGTH}"
    if valid_id(v):
        return None
    try:
        check_id(v)
    except ValueError as exc:
        return str(exc)
    return None  # unreachable: valid_id and check_id agree


def _invisible_or_space(c: str) -> bool:
    return c.isspace() or unicodedata.category(c) in ("Cf", "Cc", "Zl", "Zp")


def fix_id(v: str) -> str:
    """The `--fix-ids` mapping: whitespace and invisible (format, control) characters at both ends
    are stripped, the rest is put in NFC, then every character the id rule forbids inside an id,
    and '%' itself, is percent-encoded (UTF-8). `urllib.parse.unquote(fix_id(v))` gives back the
    stripped, NFC id, so a client maps its live ids with the same function and nothing collides
    but ids that were already the same to a reader."""
    a, b = 0, len(v)
    while a < b and _invisible_or_space(v[a]):
        a += 1
    while b > a and _invisible_or_space(v[b - 1]):
        b -= 1
    core = unicodedata.normalize("NFC", v[a:b])
    return "".join(quote(c, safe="") if c == "%" or not valid_id(f"x{c}x") else c for c in core)


def null_like(v: str | None, extra: Iterable[str] = ()) -> bool:
    """Whether a user id reads as a missing value (`NA`, `null`, `-1`, empty, ... or one of `extra`)."""
    if v is None:
        return True
    s = v.strip().lower()
    return s in NULL_IDS or s in {e.strip().lower() for e in extra}


def normalisation_twins(ids: Iterable[str]) -> list[tuple[str, ...]]:
    """Groups of distinct ids that are equal once put in Unicode NFC (e.g. 'café' written with a
    combining accent and without): a reader sees one id, the service two."""
    groups: dict[str, list[str]] = {}
    for v in dict.fromkeys(ids):  # distinct, in first-seen order (a stable example to show)
        groups.setdefault(v if v.isascii() else unicodedata.normalize("NFC", v), []).append(v)
    return [tuple(sorted(g)) for g in groups.values() if len(g) > 1]
