"""Request validation: ids, timestamps, settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.api.schemas import EventIn, EventsIn
from app.settings import Settings


def test_timestamp_epoch_iso_and_default() -> None:
    assert EventIn(user_id="u", item_id="i", timestamp=1700000000).timestamp == 1700000000.0
    iso = EventIn(user_id="u", item_id="i", timestamp="2023-11-14T22:13:20Z").timestamp
    assert iso == 1700000000.0
    naive = EventIn(user_id="u", item_id="i", timestamp="2023-11-14T22:13:20").timestamp
    assert naive == 1700000000.0  # naive means UTC
    assert EventIn(user_id="u", item_id="i").timestamp is None


@pytest.mark.parametrize(
    "bad",
    [
        {"user_id": "", "item_id": "i"},
        {"user_id": "u" * 129, "item_id": "i"},
        {"user_id": "u\n", "item_id": "i"},
        {"user_id": "u", "item_id": "a\x1fb"},
        {"user_id": "u", "item_id": 5},
        {"user_id": "u", "item_id": "i", "timestamp": -1},
        {"user_id": "u", "item_id": "i", "timestamp": 1.7e12},  # milliseconds, not seconds
        {"user_id": "u", "item_id": "i", "timestamp": "yesterday"},
        {"user_id": "u", "item_id": "i", "extra": 1},
        {"user_id": "u"},
    ],
)
def test_bad_events_are_rejected(bad: dict) -> None:
    with pytest.raises(ValidationError):
        EventIn.model_validate(bad)


def test_unicode_ids_are_fine() -> None:
    assert EventIn(user_id="ユーザー 1", item_id="película:7").user_id == "ユーザー 1"


def test_empty_batch_rejected() -> None:
    with pytest.raises(ValidationError):
        EventsIn(events=[])


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQREC_BUNDLES", "a/b, c/d")
    monkeypatch.setenv("SEQREC_MAX_HISTORY", "50")
    monkeypatch.setenv("SEQREC_API_KEY", "s3cret")
    s = Settings()
    assert [str(p) for p in s.bundles] == ["a/b", "c/d"]
    assert s.max_history == 50 and s.redis_url is None
    assert "s3cret" not in repr(s)  # SecretStr: never printed or logged


def test_settings_need_a_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEQREC_BUNDLES", raising=False)
    with pytest.raises(ValidationError, match="SEQREC_BUNDLES"):
        Settings()


@pytest.mark.parametrize(
    "uid",
    [
        "a/b",
        "/",
        "b-x/../../etc/passwd",
        " ",
        "   ",
        " lead",
        "trail ",
        "\u3000wide",
        "a\u200bb",
        "\u200b",
        "a\u202eb",
        "a\u2066b\u2069",
        "\ufeffbom",
        "a\ufffdb",
        "a\u2028b",
        "tag\U000e0041",
    ],
)
def test_unreadable_ids_are_refused(uid: str) -> None:
    """Ids that no GET route could address (`/`), invisible ones (Cf: zero-width, bidi), ones only
    whitespace tells apart, and U+FFFD (what %FF in a URL decodes to) are refused on write."""
    with pytest.raises(ValidationError) as err:
        EventIn(user_id=uid, item_id="i")
    msg = err.value.errors()[0]["msg"]
    assert len(uid.strip()) < 2 or uid not in msg  # the message names the rule, not the input


def test_forbidden_set_covers_every_format_character() -> None:
    import sys
    import unicodedata

    from app.api.schemas import check_id

    for cp in range(sys.maxunicode + 1):
        c = chr(cp)
        if unicodedata.category(c) in ("Cf", "Cc", "Zl", "Zp"):
            with pytest.raises(ValueError):
                check_id(f"a{c}b")
    assert check_id("a b") == "a b" and check_id("用户-😀") == "用户-😀" and check_id("x" * 128)


def test_timestamp_bounds_are_in_the_schema() -> None:
    schema = EventIn.model_json_schema()
    number = next(s for s in schema["properties"]["timestamp"]["anyOf"] if s.get("type") == "number")
    assert number["minimum"] == 0 and number["exclusiveMaximum"] == 1e11
    assert "pattern" in schema["properties"]["user_id"]


def test_body_id_pattern_accepts_exactly_what_check_id_accepts() -> None:
    """Body ids are checked by pydantic-core's regex engine, the rule's text by check_id: every code
    point, alone and inside, leading and trailing an id, gets the same verdict from both."""
    import sys

    from pydantic import TypeAdapter

    from app.api.schemas import Id, check_id

    def python_ok(v: str) -> bool:
        try:
            check_id(v)
        except ValueError:
            return False
        return True

    # pydantic-core's verdicts a plane at a time, each in one call (a list validates every element
    # and names each failure), not 4.4 million calls from Python nor 4.4 million strings at once.
    many = TypeAdapter(list[Id])
    disagree = []
    for plane in range(0, sys.maxunicode + 1, 0x10000):
        cases = [
            (cp, form, form.format(chr(cp)))
            for cp in range(plane, plane + 0x10000)
            if not 0xD800 <= cp <= 0xDFFF  # lone surrogates cannot reach a str from JSON or a URL
            for form in ("a{}b", "{}", "{}a", "a{}")
        ]
        try:
            many.validate_python([v for _, _, v in cases])
            rust_refused: set[int] = set()
        except ValidationError as exc:
            rust_refused = {int(e["loc"][0]) for e in exc.errors()}
        disagree += [(cp, form) for n, (cp, form, v) in enumerate(cases) if python_ok(v) == (n in rust_refused)]
    assert disagree == []


def test_a_bad_body_id_is_answered_with_the_rule(bundle_path: Path) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(Settings(bundles=[bundle_path], api_key="k"))) as c:
        r = c.post("/events", json={"events": [{"user_id": "a\u200bb", "item_id": "i"}]}, headers={"X-API-Key": "k"})
    assert r.status_code == 422
    assert r.json()["detail"] == (
        "body.events.0.user_id: Value error, id must not contain U+200B (Cf): no '/', control, format"
        " (zero-width, bidi) or U+FFFD"
    )
    assert r.json()["errors"][0]["type"] == "value_error"
