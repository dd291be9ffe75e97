"""`seqrec download` against a local HTTP server: verified files land whole, anything else leaves nothing."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from typer.testing import CliRunner

from training.cli import app
from training.data.download import SOURCES, DownloadError, Source, download, fetch

BODY = b"user item\n" + b"1 2\n" * 5000


class _Handler(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path.startswith("/broken"):
            self.wfile.write(body[: len(body) // 3])  # then the server goes away mid-body
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as zf:
        zf.writestr("set/a.txt", BODY)
        zf.writestr("set/b.txt", b"b")
    _Handler.files = {"/file.txt": BODY, "/broken.txt": BODY, "/set.zip": zbuf.getvalue()}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


SHA = hashlib.sha256(BODY).hexdigest()


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.rglob("*") if p.is_file())


def test_a_good_file_is_verified_and_renamed_into_place(server: str, tmp_path: Path) -> None:
    out = fetch(f"{server}/file.txt", tmp_path / "d" / "file.txt", sha256=SHA, progress=False)
    assert out.read_bytes() == BODY and _leftovers(tmp_path) == ["file.txt"]


def test_a_wrong_checksum_is_a_clear_error_and_leaves_nothing(server: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"checksum mismatch \(sha256 [0-9a-f]{64}, expected 0+\)"):
        fetch(f"{server}/file.txt", tmp_path / "file.txt", sha256="0" * 64, progress=False)
    with pytest.raises(DownloadError, match="md5"):
        fetch(f"{server}/file.txt", tmp_path / "file.txt", sha256=SHA, md5="0" * 32, progress=False)
    assert _leftovers(tmp_path) == []


def test_a_broken_connection_is_a_clear_error_and_leaves_nothing(server: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"broken\.txt.*(closed after|after [\d,]+ bytes)"):
        fetch(f"{server}/broken.txt", tmp_path / "file.txt", sha256=SHA, progress=False)
    assert _leftovers(tmp_path) == []
    with pytest.raises(DownloadError, match="404"):
        fetch(f"{server}/missing.txt", tmp_path / "file.txt", progress=False)
    assert _leftovers(tmp_path) == []


def test_a_dataset_with_an_archive_and_a_file(server: str, tmp_path: Path) -> None:
    zsha = hashlib.sha256(_Handler.files["/set.zip"]).hexdigest()
    sources = {
        "toy": (
            Source(f"{server}/set.zip", "set", sha256=zsha, members={"set/a.txt": ("toy/a.txt", SHA)}),
            Source(f"{server}/file.txt", "toy/seq.txt", sha256=SHA),
        )
    }
    files = download("toy", tmp_path, sources, progress=False)
    assert [f.name for f in files] == ["a.txt", "seq.txt"] and _leftovers(tmp_path) == ["a.txt", "seq.txt"]
    stamp = (tmp_path / "toy" / "a.txt").stat().st_mtime_ns
    download("toy", tmp_path, sources, progress=False)  # verified files are kept, not fetched again
    assert (tmp_path / "toy" / "a.txt").stat().st_mtime_ns == stamp
    bad = {"toy": (Source(f"{server}/set.zip", "set", sha256=zsha, members={"set/a.txt": ("x/a.txt", "0" * 64)}),)}
    with pytest.raises(DownloadError, match=r"set/a\.txt does not match its pinned sha256"):
        download("toy", tmp_path / "other", bad, progress=False)
    assert _leftovers(tmp_path / "other") == []


def test_every_cli_dataset_has_a_pinned_public_source() -> None:
    from training.data import DATASETS

    assert set(SOURCES) == set(DATASETS)
    for name, sources in SOURCES.items():
        for s in sources:
            assert s.url.startswith("https://"), name
            assert s.sha256 or all(sha for sha in s.files.values()), f"{name}: {s.url} has no pinned sha256"


def test_the_cli_names_an_unknown_dataset(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["download", "ml-10m", "--data-dir", str(tmp_path)])
    assert r.exit_code == 2 and "downloadable: ml-1m" in r.output
