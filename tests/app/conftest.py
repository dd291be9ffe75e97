"""Fixtures for the service tests: a tiny bundle trained on the synthetic dataset, and a throwaway Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import RedisProc
from training.data import SeqData


def _tiny_sasrec(data: SeqData, run: Path) -> Path:
    """A few seconds of training: quality is irrelevant, the bundle format is what the service reads."""
    from training.train import train

    model = {"max_len": 30, "dim": 16, "num_layers": 1}
    train("sasrec", data, run, model_overrides=model, train_overrides=TINY_TRAIN, progress=False)
    return run


TINY_TRAIN = {"epochs": 1, "batch_size": 128, "max_users": 300}


@pytest.fixture(scope="session")
def tiny_run(synthetic: SeqData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_sasrec(synthetic, tmp_path_factory.mktemp("svc-run"))


@pytest.fixture(scope="session")
def bundle_path(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.export import export_bundle

    return export_bundle(
        tiny_run / "best.pt", tmp_path_factory.mktemp("svc-artifacts"), name="tiny-sasrec", program=False
    )


@pytest.fixture(scope="session")
def ml100k_bundle_path(ml100k: SeqData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny SASRec on ML-100K: for tests that serve it next to another ML-100K bundle."""
    from training.export import export_bundle

    run = _tiny_sasrec(ml100k, tmp_path_factory.mktemp("svc-run-ml100k"))
    return export_bundle(
        run / "best.pt", tmp_path_factory.mktemp("svc-artifacts-ml100k"), name="tiny-sasrec", program=False
    )


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server on a free port (no persistence), so tests never touch shared data."""
    with RedisProc(tmp_path_factory.mktemp("redis")) as r:
        yield r.url


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def key_prefix() -> str:
    return f"seqrec-test-{uuid.uuid4().hex[:8]}:"
