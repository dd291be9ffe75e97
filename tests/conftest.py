"""Shared fixtures: real data from ../shared/data (or $SEQREC_DATA_DIR), prepared once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.redis_cluster import redis_cluster  # noqa: F401  (session fixture: a local Redis Cluster)
from training.data.readers import default_data_dir


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = default_data_dir()
    if not (d / "ml-100k" / "u.data").is_file():
        pytest.fail(f"real datasets not found under {d}: set SEQREC_DATA_DIR")
    return d


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seqrec_cache")
    os.environ["SEQREC_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def ml100k(data_dir: Path, cache_dir: Path):
    from training.data import prepare

    return prepare("ml-100k", data_dir, cache_dir)


@pytest.fixture(scope="session")
def ml1m(data_dir: Path, cache_dir: Path):
    from training.data import prepare

    return prepare("ml-1m", data_dir, cache_dir)
