"""Session fixture: one local Redis Cluster (3 masters + 3 replicas, tests/support/cluster.py) run with
the compose profile's node config, docker/redis-cluster.conf."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import ClusterProcs

# The compose profile's node config (AOF, appendfsync always, ...), with ports, dirs and a 1 s node timeout.
CLUSTER_CONF = Path(__file__).resolve().parents[1] / "docker" / "redis-cluster.conf"


def start_cluster(workdir: Path, attempts: int = 2) -> ClusterProcs:
    """A started cluster on free ports. The ports are picked before the nodes bind them, so another
    process (a parallel test worker's Redis, a client's ephemeral port) can take one in between: a
    failed start is retried once on fresh ports."""
    for attempt in range(1, attempts + 1):
        c = ClusterProcs(workdir / f"try{attempt}", conf=CLUSTER_CONF)
        if not c.available:
            pytest.skip("redis-server / redis-cli are not installed: the Redis Cluster tests need both")
        try:
            return c.start()
        except (subprocess.SubprocessError, TimeoutError) as exc:
            c.stop()
            if attempt == attempts:
                pytest.fail(f"could not start a local Redis Cluster: {exc}")
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcs]:
    """One 3-master, 3-replica cluster for the whole session (private ports; tests use their own prefix).
    Under pytest-xdist each worker has its own (its own temp dir, so its own ports and data).
    Tests that kill nodes must leave it healthy again (restart what they killed, wait_healthy)."""
    c = start_cluster(tmp_path_factory.mktemp("redis-cluster"))
    yield c
    c.stop()
