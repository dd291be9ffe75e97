"""Will a log fit? The memory `prepare` needs, estimated before it reads a byte of the rows.

A log too large for the machine used to end in the kernel's OOM kill, minutes in and without a
word. The estimate is the number of events (Parquet counts them in its footer; a CSV's are
estimated from its size and the length of its first lines) times the peak memory per event
measured for `prepare` (docs/scale.md), and a log that would need more than the memory
available now is refused with what to do instead.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from pathlib import Path

from training.data.readers import DatasetError

# Peak resident memory of `prepare` per event read: 150-175 B on the synthetic shop logs of
# benchmarks/scale from 10M to 100M events (Parquet; a CSV at 10M: ~180 B; docs/scale.md), with a margin.
BYTES_PER_EVENT = 200
GZIP_RATIO = 4.0  # a gzipped CSV of ids and times is about a quarter of its text
_SAMPLE = 1 << 20  # bytes of a CSV read to measure its line length
GIB = 2**30


def estimate_events(path: Path) -> int:
    """The events in one file: exact for Parquet, estimated from the size for text files."""
    import polars as pl

    if path.suffix == ".parquet":
        return int(pl.scan_parquet(path).select(pl.len()).collect().item())
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:  # type: ignore[operator]
            head = fh.read(_SAMPLE)
    except (OSError, EOFError):
        return 0  # the reader names what is wrong with the file
    lines = max(1, head.count(b"\n"))
    size = path.stat().st_size * (GZIP_RATIO if path.suffix == ".gz" else 1.0)
    return int(size / (len(head) / lines)) if len(head) >= _SAMPLE else lines


def available_bytes() -> int:
    """Memory available to a new allocation now (MemAvailable), else all of it."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _size(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def check_memory(paths: Sequence[Path], available: int | None = None) -> int:
    """Refuse logs whose estimated peak memory exceeds what is available; returns the estimate."""
    events = sum(estimate_events(Path(p)) for p in paths)
    need = events * BYTES_PER_EVENT
    have = available_bytes() if available is None else available
    if need > have:
        what = Path(paths[0]).name + (f" and {len(paths) - 1} more" if len(paths) > 1 else "")
        raise DatasetError(
            f"{what}: ~{events:,} events; preparing them needs ~{_size(need)} of memory and this machine "
            f"has {_size(have)} available. Prepare a part of the log (--since/--until cut it by time), "
            f"free memory, or use a machine with more; --no-memory-check reads it anyway"
        )
    return need
