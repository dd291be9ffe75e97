"""Fixtures for the live-loop tests: a private redis-server (never the shared one on 6379)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import RedisProc


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[RedisProc]:
    r = RedisProc(tmp_path.parent / f"{tmp_path.name}-redis").start()
    yield r
    r.kill()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
