"""Fixtures every test package shares: the synthetic dataset, and real datasets when they are there.

Real data comes from $SEQREC_DATA_DIR, else ../shared/data (training.data.readers.default_data_dir).
A test that needs it is marked `real_data` (automatically when it uses the data_dir / ml100k / ml1m
fixtures; by hand, `@pytest.mark.real_data("ml-1m")`, when it reads the data another way, e.g. in a
subprocess) and is skipped, with the reason, when the dataset is not found; the run ends with a
line saying how many were skipped and how to run them. Hide the data to check that the rest
passes without it: `SEQREC_DATA_DIR=$(mktemp -d) python -m pytest -q`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_cluster import redis_cluster  # noqa: F401  (session fixture: a local Redis Cluster)
from tests.support.data import synthetic_seqdata
from tests.support.procs import RedisNotInstalled
from training.data import SeqData
from training.data.readers import default_data_dir

# Datasets whose spec lists no files (`prepare` falls back to a download): any one of these is enough.
PROBES = {"ml-1m": ("ml-1m/ml-1m.sasrec.txt", "ml-1m/ratings.dat"), "ml-1m-ratings": ("ml-1m/ratings.dat",)}
REAL_DATA_FIXTURES = {"data_dir": "ml-100k", "ml100k": "ml-100k", "ml1m": "ml-1m"}
SKIP_PREFIX = "real data:"


def dataset_present(name: str) -> bool:
    """Every file the dataset's spec lists (what `prepare` checks first) is in the data dir; no download."""
    from training.data import DATASETS

    d = default_data_dir()
    if name in PROBES:
        return any((d / f).is_file() for f in PROBES[name])
    return all((d / f).is_file() for f in DATASETS[name].files)


def _skip_reason(name: str) -> str:
    return (
        f"{SKIP_PREFIX} {name} not found under {default_data_dir().resolve()} "
        "(set SEQREC_DATA_DIR to a directory that holds it)"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "real_data(name='ml-100k'): needs a real dataset; skipped with the reason when it is not found"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        needed = {REAL_DATA_FIXTURES[f] for f in getattr(item, "fixturenames", ()) if f in REAL_DATA_FIXTURES}
        for mark in item.iter_markers("real_data"):
            needed.add(mark.args[0] if mark.args else "ml-100k")
        if needed and not item.get_closest_marker("real_data"):
            item.add_marker(pytest.mark.real_data(*sorted(needed)[:1]))
        missing = sorted(n for n in needed if not dataset_present(n))
        if missing:
            item.add_marker(pytest.mark.skip(reason=_skip_reason(", ".join(missing))))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    real = [r for r in skipped if SKIP_PREFIX in str(r.longrepr)]
    if real:
        terminalreporter.write_line(
            f"real-data tests: {len(real)} skipped, datasets not found under {default_data_dir().resolve()}; "
            "set SEQREC_DATA_DIR (or put them in ../shared/data) to run them",
            yellow=True,
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    try:
        return (yield)
    except RedisNotInstalled as exc:
        pytest.skip(str(exc))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    try:
        return (yield)
    except RedisNotInstalled as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def synthetic() -> SeqData:
    """300 users, 120 items, 6-40 events each (tests/support/data.py)."""
    return synthetic_seqdata()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = default_data_dir()
    if not dataset_present("ml-100k"):
        pytest.skip(_skip_reason("ml-100k"))
    return d


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seqrec_cache")
    os.environ["SEQREC_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def ml100k(data_dir: Path, cache_dir: Path) -> SeqData:
    from training.data import prepare

    return prepare("ml-100k", data_dir, cache_dir)


@pytest.fixture(scope="session")
def ml1m(cache_dir: Path) -> SeqData:
    from training.data import prepare

    if not dataset_present("ml-1m"):
        pytest.skip(_skip_reason("ml-1m"))
    return prepare("ml-1m", default_data_dir(), cache_dir)
