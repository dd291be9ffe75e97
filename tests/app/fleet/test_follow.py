"""The follower (app/fleet/follow.py): an announcement the store cannot serve for a moment is
applied again, not dropped until the next resubscription."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

import app.fleet.follow as follow_mod
from app.stores.base import StoreUnavailable
from app.stores.items import Announcement


class _Items:
    """The announcements of one (re)subscription, then silence."""

    def __init__(self, anns: list[Announcement]) -> None:
        self.anns = anns

    async def announcements(self) -> AsyncIterator[Announcement]:
        for a in self.anns:
            yield a
        await asyncio.Event().wait()

    async def heartbeat(self) -> None:
        return None


def _run(state: Any, seconds: float) -> None:
    async def go() -> None:
        task = asyncio.create_task(follow_mod.follow(state))
        await asyncio.sleep(seconds)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())


def test_an_announcement_is_applied_again_while_the_store_is_unavailable(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    applied: list[Announcement] = []
    failures = iter([StoreUnavailable("redis: TimeoutError: Timeout connecting to server")] * 2)

    async def apply(state: Any, ann: Announcement) -> None:
        exc = next(failures, None)
        if exc is not None:
            raise exc
        applied.append(ann)

    monkeypatch.setattr(follow_mod, "apply", apply)
    monkeypatch.setattr(follow_mod, "RETRY_S", (0.01, 0.01, 0.01))
    resync = Announcement(resync=True)
    with caplog.at_level(logging.WARNING, logger="seqrec.app"):
        _run(SimpleNamespace(items=_Items([resync])), 0.3)
    assert applied == [resync]  # the third try went through
    assert [r.levelno for r in caplog.records] == [logging.WARNING] * 2  # no stack: not an error
    assert not any(r.exc_info for r in caplog.records)


def test_past_the_last_try_the_follower_goes_on_with_the_next_announcement(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    applied: list[Announcement] = []
    first, second = Announcement(config=3), Announcement(config=4)

    async def apply(state: Any, ann: Announcement) -> None:
        if ann is first:
            raise StoreUnavailable("redis: ConnectionError")
        applied.append(ann)

    monkeypatch.setattr(follow_mod, "apply", apply)
    monkeypatch.setattr(follow_mod, "RETRY_S", (0.01, 0.01))
    with caplog.at_level(logging.WARNING, logger="seqrec.app"):
        _run(SimpleNamespace(items=_Items([first, second])), 0.3)
    assert applied == [second]
    assert len(caplog.records) == 3 and "the store is unavailable" in caplog.records[-1].getMessage()
