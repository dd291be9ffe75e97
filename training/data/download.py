"""`seqrec download NAME`: fetch a public dataset into the data dir, verified against pinned sums.

Every file goes to a temporary name beside its destination and is renamed into place only once
its checksum matches, so an interrupted or corrupted download never leaves a file that looks
complete. Archives (GroupLens zips) are checked whole, then the members the readers need are
extracted, each through a temporary file as well.

How each pin was obtained (this code was written on a machine that reaches no dataset host):
- ml-1m.zip: sha256 a6898adb... as published independently by several projects that fetch it
  (TensorFlow Recommenders, Keras RS, SecretFlow), plus the md5 GroupLens publishes beside it.
- ml-100k.zip: the md5 GroupLens publishes; its sha256 is not pinned (not known with certainty
  here), so every extracted file is checked against the sha256 of the complete original files.
- SASRec's ml-1m.txt, BERT4Rec's beauty.txt, the SASRec-id mapping and the Office files: sha256 of
  copies proven byte-identical to the upstream git blobs (`git hash-object`), at pinned commits
  where the upstream repository's history is known.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from training.data.readers import DatasetError

CHUNK = 1 << 16
TIMEOUT_S = 60


class DownloadError(DatasetError):
    """A download that failed, broke off or did not match its pinned checksum."""


@dataclass(frozen=True)
class Source:
    url: str
    dest: str  # the file (or, for an archive, the folder) relative to the data dir
    sha256: str | None = None  # of the downloaded bytes
    md5: str | None = None  # published beside some archives (GroupLens)
    # archive member -> (destination relative to the data dir, its sha256 or None)
    members: dict[str, tuple[str, str | None]] = field(default_factory=dict)

    @property
    def files(self) -> dict[str, str | None]:
        """The files this source leaves in the data dir -> their pinned sha256 (None: unpinned)."""
        if self.members:
            return dict(self.members.values())
        return {self.dest: self.sha256}


_GL = "https://files.grouplens.org/datasets/movielens"
_GH = "https://raw.githubusercontent.com"
_ML1M_ZIP = Source(
    f"{_GL}/ml-1m.zip",
    "ml-1m",
    sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
    md5="c4d9eecfca2ab87c1945afe126590906",
    members={
        # the archive's sha256 covers its members
        f"ml-1m/{n}": (f"ml-1m/{n}", None)
        for n in ("ratings.dat", "movies.dat", "users.dat", "README")
    },
)
_MAPPING = f"{_GH}/asash/ml1m-sas-mapping/56013fb1def17a503613b5b914c2809ed18f607c"
_OFFICE = f"{_GH}/ysh-1998/LRD/ccbd8299c71bb0d26488d67b622706caf9139e21/data/Office"
_OFFICE_SUMS = {
    "train.csv": "015236e98589dac0801be8fe16519d95735b2efbd64bec890685297a1bc69fec",
    "dev.csv": "f94b18e4be2f7322905b7fd152bce78e4d554cb7561426fab6855e7df07790a0",
    "test.csv": "5b5fb42bf500ca344d565461706cdb548ebf21b371f3f871d517d8c967e63ed6",
    "Office.item2index": "4a1d4bb829f89ce23f7f8e6637238a2f9049ca28fed4e73840b36fdba479a046",
    "Office.text": "34932e3a6cd6b6d9e999608b309cfa5c6811084dc8be77a18ae89de50da7f862",
    "item_meta.csv": "dbefb00348f251c56d77687c1b3c369fbb35c3a48cb9fd6de25eca54f19d0c97",
}
_ML100K_SUMS = {
    "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
    "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
    "u.genre": "9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb",
    "u.user": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
}

# Every dataset the CLI names; each has a public address.
SOURCES: dict[str, tuple[Source, ...]] = {
    # The standard sequential ML-1M (SASRec's file, what the benchmarks use) + its id mapping
    # (for titles) + the original GroupLens files (titles, timestamps, all 6,040 users' ratings).
    "ml-1m": (
        Source(
            f"{_GH}/kang205/SASRec/master/data/ml-1m.txt",
            "ml-1m/ml-1m.sasrec.txt",
            sha256="b725f3acb3986fe3130bffd1e77a74d182a1f51799567a236dbd60270f95b0a2",
        ),
        Source(
            f"{_MAPPING}/sas_to_original_items.txt",
            "ml-1m/sas_to_original_items.txt",
            sha256="9ae42c23af0b0fe2f189b9d5acc6cf3936bffe1a9568390cf5d100c0c1b1fca1",
        ),
        Source(
            f"{_MAPPING}/sas_to_original_users.txt",
            "ml-1m/sas_to_original_users.txt",
            sha256="121893a66ab13fad83a67e12e3b3e6ddc56bcd01f0bcedf2ccb10bd8405e6239",
        ),
        _ML1M_ZIP,
    ),
    "ml-1m-ratings": (_ML1M_ZIP,),
    "ml-1m-ratings-typed": (_ML1M_ZIP,),
    "ml-100k": (
        Source(
            f"{_GL}/ml-100k.zip",
            "ml-100k",
            md5="0e33842e24a9c977be4e0107933c0723",
            members={f"ml-100k/{n}": (f"ml-100k/{n}", s) for n, s in _ML100K_SUMS.items()},
        ),
    ),
    "beauty": (
        Source(
            f"{_GH}/FeiSun/BERT4Rec/615eaf2004abecda487a38d5b0c72f3dcfcae5b3/data/beauty.txt",
            "beauty-bert4rec/beauty.txt",
            sha256="f480b7a7403852342ffd8f9809bb30697dd669be31813d0e204b698fec86ef49",
        ),
    ),
    "office": tuple(Source(f"{_OFFICE}/{n}", f"amazon-office/{n}", sha256=s) for n, s in _OFFICE_SUMS.items()),
}


def file_sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _present(data_dir: Path, files: dict[str, str | None]) -> bool:
    """Every file there, and each pinned one matching its sum."""
    for rel, sha in files.items():
        p = data_dir / rel
        if not p.is_file() or (sha is not None and file_sha256(p) != sha):
            return False
    return True


def fetch(url: str, dest: Path, sha256: str | None = None, md5: str | None = None, progress: bool = True) -> Path:
    """Download `url` to `dest` through a temporary file renamed at the end; the bytes must match
    the pinned sums. On any failure nothing is left at `dest` (nor a temporary file)."""
    fd, tmp = _temp_beside(dest)
    h256, h5 = hashlib.sha256(), hashlib.md5()
    got = 0
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
                    size = int(resp.headers.get("Content-Length") or 0) or None
                    with tqdm(
                        total=size,
                        unit="B",
                        unit_scale=True,
                        desc=dest.name,
                        disable=not progress,
                        file=sys.stderr,
                        leave=False,
                    ) as bar:
                        while chunk := resp.read(CHUNK):
                            out.write(chunk)
                            h256.update(chunk)
                            h5.update(chunk)
                            got += len(chunk)
                            bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as exc:  # URLError, resets, IncompleteRead
                if isinstance(exc, urllib.error.HTTPError):
                    reason: object = f"HTTP {exc.code} {exc.reason}"
                else:
                    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                raise DownloadError(f"cannot download {url}: {reason} (after {got:,} bytes)") from None
            if size is not None and got != size:
                raise DownloadError(f"cannot download {url}: the connection closed after {got:,} of {size:,} bytes")
        if sha256 is not None and h256.hexdigest() != sha256:
            raise DownloadError(
                f"{url}: checksum mismatch (sha256 {h256.hexdigest()}, expected {sha256}); nothing was written"
            )
        if md5 is not None and h5.hexdigest() != md5:
            raise DownloadError(f"{url}: checksum mismatch (md5 {h5.hexdigest()}, expected {md5}); nothing was written")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _extract(archive: Path, source: Source, data_dir: Path) -> None:
    """Each needed member through a temporary file, checked, then renamed; all or nothing."""
    staged: list[tuple[Path, Path]] = []
    try:
        with zipfile.ZipFile(archive) as zf:
            names = set(zf.namelist())
            for member, (rel, sha) in source.members.items():
                if member not in names:
                    raise DownloadError(f"{source.url}: the archive has no {member}")
                dest = data_dir / rel
                fd, tmp = _temp_beside(dest)
                staged.append((tmp, dest))
                with zf.open(member) as src, os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(src, out)
                if sha is not None and file_sha256(tmp) != sha:
                    raise DownloadError(f"{source.url}: {member} does not match its pinned sha256; nothing was written")
        for tmp, dest in staged:
            os.replace(tmp, dest)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{source.url}: not a valid zip archive ({exc})") from None
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


def download(
    name: str,
    data_dir: Path,
    sources: dict[str, tuple[Source, ...]] | None = None,
    progress: bool = True,
    force: bool = False,
) -> list[Path]:
    """Fetch dataset `name` into `data_dir` (files already there and matching are kept); returns the
    files it holds afterwards."""
    table = SOURCES if sources is None else sources
    if name not in table:
        raise DownloadError(f"no public download for {name!r}; downloadable: {', '.join(table)}")
    out: list[Path] = []
    for source in table[name]:
        if force or not _present(data_dir, source.files):
            if source.members:
                with tempfile.TemporaryDirectory(dir=_writable_parent(data_dir)) as tmp:
                    archive = fetch(source.url, Path(tmp) / Path(source.url).name, source.sha256, source.md5, progress)
                    _extract(archive, source, data_dir)
            else:
                fetch(source.url, data_dir / source.dest, source.sha256, source.md5, progress)
        out += [data_dir / rel for rel in source.files]
    return out


def _temp_beside(dest: Path) -> tuple[int, Path]:
    """A temporary file in `dest`'s folder (so the final rename is atomic), or a clear error."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as exc:
        raise DownloadError(
            f"cannot write in {dest.parent}: {exc.strerror}: pass --data-dir (or set SEQREC_DATA_DIR)"
        ) from None
    return fd, Path(name)


def _writable_parent(path: Path) -> Path:
    """`path`, created if need be (the temporary files live on its filesystem)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create {path}: {exc.strerror}: pass --data-dir (or set SEQREC_DATA_DIR)") from None
    return path
