"""Fixtures for the live-loop tests: a private redis-server (never the shared one on 6379), and two
identical tiny bundles under two names (an A/A experiment)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import RedisProc
from training.data import SeqData


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[RedisProc]:
    r = RedisProc(tmp_path.parent / f"{tmp_path.name}-redis").start()
    yield r
    r.kill()


@pytest.fixture(scope="session")
def aa_bundles(synthetic: SeqData, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """One tiny SASRec (a few seconds of training on the synthetic data) exported twice, as
    `tiny-a` and `tiny-b`: two bundles that answer alike."""
    from training.export import export_bundle
    from training.train import train

    run = tmp_path_factory.mktemp("live-run")
    model = {"max_len": 30, "dim": 16, "num_layers": 1}
    tiny = {"epochs": 1, "max_users": 300}
    train("sasrec", synthetic, run, model_overrides=model, train_overrides=tiny, progress=False)
    out = tmp_path_factory.mktemp("live-bundles")
    return [export_bundle(run / "best.pt", out, name=name, program=False) for name in ("tiny-a", "tiny-b")]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
