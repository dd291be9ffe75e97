"""The one id rule of the product: what a user or item id may be, for the service and for `prepare`
alike (a pure module: no FastAPI, so the training side can share it)."""

from __future__ import annotations

import re
import unicodedata

MAX_ID_LENGTH = 128
# What an id may not contain, anywhere (docs/api.md, "Ids"):
#   /                        a path segment cannot carry it, so such an id could be written but never read back;
#   C0/C1 controls           the store uses 0x1f as a separator; newlines break logs;
#   format characters (Cf)   zero-width and bidi controls: invisible, so two ids that look alike would differ;
#   U+2028/U+2029            line and paragraph separators;
#   U+FFFD                   what undecodable bytes in a URL (%FF) become: different raw bytes must not reach
#                            the same id, so the replacement character is refused everywhere.
# Nor may an id start or end with whitespace (which also refuses whitespace-only ids).
# The Cf list is Unicode 15.1's; tests/app/api/test_schemas.py checks it against Python's unicodedata.
_FORBIDDEN = (
    "/\x00-\x1f\x7f-\x9f"
    "\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e\u200b-\u200f\u202a-\u202e"
    "\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f"
    "\u2028\u2029\ufffd"
)
ID_PATTERN = rf"^[^\s{_FORBIDDEN}](?:[^{_FORBIDDEN}]*[^\s{_FORBIDDEN}])?$"
_BAD_CHAR = re.compile(f"[{_FORBIDDEN}]")
_ID = re.compile(ID_PATTERN)


def valid_id(v: str) -> bool:
    """Whether `v` passes `check_id` (the cheap test, for the pre-routed read)."""
    return _ID.fullmatch(v) is not None


def check_id(v: str) -> str:
    """The one id rule, for body ids and path ids alike. The message names the rule and the code
    point, never the input (which may be long or invisible)."""
    if _ID.fullmatch(v):
        return v
    bad = _BAD_CHAR.search(v)
    if bad is not None:
        c = bad.group()
        what = "'/'" if c == "/" else f"U+{ord(c):04X} ({unicodedata.category(c)})"
        raise ValueError(f"id must not contain {what}: no '/', control, format (zero-width, bidi) or U+FFFD")
    raise ValueError("id must not start or end with whitespace")


def id_rule_message(value: object) -> str | None:
    """check_id's message for a value that failed the id pattern (None when it passes), so that a
    pattern error is answered with the rule and code point, not the (long) pattern itself."""
    if not isinstance(value, str):
        return None
    try:
        check_id(value)
    except ValueError as exc:
        return str(exc)
    return None
