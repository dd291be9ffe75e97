"""An exclusive lock on a file, shared by the processes of one test run (pytest-xdist workers).

Used where several workers would otherwise build the same artefact into the same directory at
once: the first one builds it under the lock, the others wait and then find it built.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive flock(2) on `path` (created if absent) for the duration of the block.

    The kernel drops the lock when the holder exits, so a crashed worker never leaves it held."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
