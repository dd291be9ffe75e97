"""Session fixture: one local Redis Cluster (3 masters + 3 replicas, scripts/local_cluster.py) run with
the compose profile's node config, docker/redis-cluster.conf."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.local_cluster import ClusterProcs

# The compose profile's node config (AOF, appendfsync always, ...), with ports, dirs and a 1 s node timeout.
CLUSTER_CONF = Path(__file__).resolve().parents[1] / "docker" / "redis-cluster.conf"


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcs]:
    """One 3-master, 3-replica cluster for the whole session (private ports; tests use their own prefix).
    Tests that kill nodes must leave it healthy again (restart what they killed, wait_healthy)."""
    c = ClusterProcs(tmp_path_factory.mktemp("redis-cluster"), conf=CLUSTER_CONF)
    if not c.available:
        pytest.skip("redis-server / redis-cli are not installed: the Redis Cluster tests need both")
    try:
        c.start()
    except (subprocess.SubprocessError, TimeoutError) as exc:
        c.stop()
        pytest.fail(f"could not start a local Redis Cluster: {exc}")
    yield c
    c.stop()
