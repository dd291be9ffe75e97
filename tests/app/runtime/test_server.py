"""app/runtime/server.py without worker processes: the sockets it binds (tests/deploy/test_workers.py runs
the supervisor itself, with real workers)."""

from __future__ import annotations

import socket

import pytest

from app.runtime.server import bind_sockets, reuse_port_available

pytestmark = pytest.mark.skipif(not reuse_port_available(), reason="SO_REUSEPORT balancing is Linux's")


def test_port_zero_gives_every_worker_a_listening_socket_on_one_port() -> None:
    socks = bind_sockets("127.0.0.1", 0, 3)
    try:
        ports = {s.getsockname()[1] for s in socks}
        assert len(socks) == 3 and len(ports) == 1 and ports != {0}
        for s in socks:
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
            assert s.get_inheritable()  # handed to a spawned worker
        # A client reaches one of them (the kernel picks which).
        with socket.create_connection(("127.0.0.1", ports.pop()), timeout=5):
            pass
    finally:
        for s in socks:
            s.close()


@pytest.mark.parametrize("reuse", [False, True], ids=["plain-listener", "reuseport-listener"])
def test_a_port_that_something_listens_on_is_refused(reuse: bool) -> None:
    """Also a listener that sets SO_REUSEPORT itself (an old server still running): joining its
    group would silently split the traffic between the two servers."""
    with socket.socket() as taken:
        if reuse:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            bind_sockets("127.0.0.1", taken.getsockname()[1], 2)


def test_main_rejects_zero_workers(capsys: pytest.CaptureFixture[str]) -> None:
    from app.runtime.server import main

    with pytest.raises(SystemExit) as exc:
        main(["--workers", "0"])
    assert exc.value.code == 2 and "--workers must be at least 1" in capsys.readouterr().err
