"""Fixtures for the service tests: a tiny real bundle (SASRec on ML-100K) and a throwaway Redis."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_run(ml100k, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few seconds of training: quality is irrelevant, the bundle format is what the service reads."""
    from training.train import train

    run = tmp_path_factory.mktemp("svc-run")
    train(
        "sasrec",
        ml100k,
        run,
        model_overrides={"max_len": 30, "dim": 16, "num_layers": 1},
        train_overrides={"epochs": 1, "batch_size": 128, "max_users": 300},
        progress=False,
    )
    return run


@pytest.fixture(scope="session")
def bundle_path(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.export import export_bundle

    return export_bundle(tiny_run / "best.pt", tmp_path_factory.mktemp("svc-artifacts"), name="tiny-sasrec")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A private redis-server on a free port (no persistence), so tests never touch shared data."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def key_prefix() -> str:
    return f"seqrec-test-{uuid.uuid4().hex[:8]}:"
