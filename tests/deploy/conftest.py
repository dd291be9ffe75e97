"""Deployment tests: real redis-server and real API processes (uvicorn) on free loopback ports
(the processes: tests/support/procs.py).

Redis runs with the compose config (docker/redis.conf) where a test is about persistence, so
what is tested is what `docker compose up` runs. Nothing here touches the shared Redis on 6379.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.data import synthetic_item_text
from tests.support.procs import REDIS_CONF, ApiProc, RedisProc
from training.data import SeqData


@pytest.fixture(scope="session")
def deploy_bundles(synthetic: SeqData, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two tiny SASRec bundles with item titles (the synthetic dataset), served side by side."""
    from training.export import export_bundle
    from training.train import train

    text = synthetic_item_text(synthetic)
    out = tmp_path_factory.mktemp("deploy-artifacts")
    paths = []
    for name, seed in (("sasrec-a", 0), ("sasrec-b", 1)):
        run = tmp_path_factory.mktemp(f"deploy-run-{name}")
        train(
            "sasrec",
            synthetic,
            run,
            model_overrides={"max_len": 30, "dim": 16, "num_layers": 1},
            train_overrides={"epochs": 1, "batch_size": 128, "max_users": 300, "seed": seed},
            progress=False,
        )
        paths.append(export_bundle(run / "best.pt", out, name=name, item_text=text, program=False))
    return paths


@pytest.fixture(scope="session")
def deploy_bundle(deploy_bundles: list[Path]) -> Path:
    return deploy_bundles[0]


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[RedisProc]:
    """A throwaway Redis with the compose config (AOF, fsync always, noeviction)."""
    r = RedisProc(tmp_path / "redis", conf=REDIS_CONF).start()
    yield r
    r.kill()


@pytest.fixture
def api_factory(tmp_path: Path) -> Iterator[Callable[..., ApiProc]]:
    started: list[ApiProc] = []

    def make(bundles: list[Path], redis_url: str | None, **env: str) -> ApiProc:
        api = ApiProc(bundles, redis_url, tmp_path, **env).start()
        started.append(api)
        return api

    yield make
    for a in started:
        a.stop()
