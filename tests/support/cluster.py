"""A real Redis Cluster of local processes: 3 masters + 3 replicas on free loopback ports.

`redis-server --cluster-enabled yes` x 6, joined by `redis-cli --cluster create ... --cluster-replicas 1`.
cluster-node-timeout is short (1 s) so a killed master's replica takes over within seconds.
Used by scripts/local_topology.py --cluster, benchmarks/serving/cluster_load.py and the test fixture
`redis_cluster` (tests/redis_cluster.py).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_ports(n: int) -> list[int]:
    """n distinct free ports whose +10000 cluster-bus port is free too (and below 65536)."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p + 10000 > 65535 or p in ports:
            continue
        try:
            with socket.socket() as b:
                b.bind(("127.0.0.1", p + 10000))
        except OSError:
            continue
        ports.append(p)
    return ports


class ClusterProcs:
    """Six redis-server processes forming one cluster; nodes can be killed (kill -9) by port."""

    def __init__(
        self,
        workdir: Path,
        masters: int = 3,
        node_timeout_ms: int = 1000,
        conf: Path | None = None,
        extra: list[str] | None = None,
    ) -> None:
        self.server = shutil.which("redis-server")
        self.cli = shutil.which("redis-cli")
        self.dir = workdir
        self.n = masters * 2
        self.masters = masters
        self.node_timeout_ms = node_timeout_ms
        self.conf = conf  # docker/redis-cluster.conf: what compose runs; None: no persistence (benchmarks)
        self.extra = extra or []
        self.ports = free_ports(self.n)
        self.procs: dict[int, subprocess.Popen] = {}

    @property
    def available(self) -> bool:
        return self.server is not None and self.cli is not None

    @property
    def url(self) -> str:
        """The URL form the service takes: every node as a startup node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def _start_node(self, port: int) -> None:
        d = self.dir / str(port)
        d.mkdir(parents=True, exist_ok=True)
        args = [self.server] if self.conf is None else [self.server, str(self.conf)]
        args += ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(d), "--daemonize", "no"]
        args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        args += ["--cluster-node-timeout", str(self.node_timeout_ms)]
        if self.conf is None:
            args += ["--save", "", "--appendonly", "no", "--protected-mode", "no"]
            # The masters still up keep serving their slots while one is down (the default stops them all).
            args += ["--cluster-require-full-coverage", "no", "--repl-diskless-sync-delay", "0"]
        args += self.extra
        self.procs[port] = subprocess.Popen(args, cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self, timeout: float = 30, attempts: int = 3) -> ClusterProcs:
        assert self.server and self.cli
        try:
            for p in self.ports:
                self._start_node(p)
            for n in range(self.n):
                self._node_up(n, timeout, attempts)
            nodes = [f"127.0.0.1:{p}" for p in self.ports]
            subprocess.run(
                [self.cli, "--cluster", "create", *nodes, "--cluster-replicas", "1", "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=timeout,
            )
            self._wait(self.healthy, timeout, "cluster_state:ok on every node")
        except BaseException:
            self.stop()  # a fixture that fails here never reaches its teardown: leave no node running
            raise
        return self

    def _node_up(self, n: int, timeout: float, attempts: int) -> None:
        """Wait for node n. Its port was free when picked, but another process (a parallel test
        worker's server, a client's ephemeral port) may bind it first: the node then exits at once,
        and starts again on another port."""
        for attempt in range(1, attempts + 1):
            port = self.ports[n]
            proc = self.procs[port]
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                if self._answers(port):
                    return
                time.sleep(0.1)
            if proc.poll() is None or attempt == attempts:
                raise TimeoutError(f"redis-server on {port} not answering (exit code {proc.poll()})")
            del self.procs[port]
            self.ports[n] = free_ports(1)[0]
            self._start_node(self.ports[n])

    def _cmd(self, port: int, *args: str, timeout: float = 2) -> str:
        assert self.cli
        out = subprocess.run(
            [self.cli, "-h", "127.0.0.1", "-p", str(port), *args], capture_output=True, text=True, timeout=timeout
        )
        return out.stdout

    def _answers(self, port: int) -> bool:
        try:
            return self._cmd(port, "ping").strip() == "PONG"
        except subprocess.TimeoutExpired:
            return False

    def alive(self) -> list[int]:
        return [p for p, pr in self.procs.items() if pr.poll() is None]

    def healthy(self) -> bool:
        """Every live node says cluster_state:ok and sees `masters` masters with slots."""
        for p in self.alive():
            try:
                if "cluster_state:ok" not in self._cmd(p, "cluster", "info"):
                    return False
            except subprocess.TimeoutExpired:
                return False
        return len(self.master_ports()) == self.masters and self.replicas_synced()

    def replicas_synced(self) -> bool:
        """Every live replica has finished its sync (else a failover would promote an empty one)."""
        for p in self.alive():
            try:
                info = self._cmd(p, "info", "replication")
            except subprocess.TimeoutExpired:
                return False
            if "role:slave" in info and "master_link_status:up" not in info:
                return False
        return True

    def master_ports(self) -> list[int]:
        """Ports of the live masters that own slots, as a live node sees them."""
        alive = self.alive()
        for p in alive:
            try:
                lines = self._cmd(p, "cluster", "nodes").splitlines()
            except subprocess.TimeoutExpired:
                continue
            out = []
            for line in lines:
                f = line.split()
                if len(f) >= 9 and "master" in f[2] and "fail" not in f[2]:
                    port = int(f[1].split("@")[0].rsplit(":", 1)[1])
                    if port in alive:
                        out.append(port)
            return sorted(out)
        return []

    def kill(self, port: int) -> None:
        """kill -9: no shutdown, no final replication."""
        pr = self.procs.get(port)
        if pr is not None and pr.poll() is None:
            pr.send_signal(signal.SIGKILL)
            pr.wait(timeout=10)

    def restart(self, port: int) -> None:
        """Start a killed node again: it rejoins (as a replica, once its slots moved on)."""
        self._start_node(port)
        self._wait(lambda: self._answers(port), 20, f"redis-server on {port}")

    def wait_healthy(self, timeout: float = 30) -> None:
        self._wait(self.healthy, timeout, "cluster_state:ok")

    @staticmethod
    def _wait(pred, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            time.sleep(0.1)
        raise TimeoutError(f"timed out waiting for {what}")

    def stop(self) -> None:
        for pr in self.procs.values():
            if pr.poll() is None:
                pr.kill()
        for pr in self.procs.values():
            pr.wait(timeout=10)
        self.procs.clear()
