"""Fixtures every test package shares: the synthetic dataset, and real datasets when they are there.

Real data comes from $SEQREC_DATA_DIR, else ../shared/data (training.data.readers.default_data_dir).
A test that needs it is marked `real_data` (automatically when it uses the data_dir / ml100k / ml1m
fixtures; by hand, `@pytest.mark.real_data("ml-1m")`, when it reads the data another way, e.g. in a
subprocess) and is skipped, with the reason, when the dataset is not found; the run ends with a
line saying how many were skipped and how to run them. Hide the data to check that the rest
passes without it: `SEQREC_DATA_DIR=$(mktemp -d) python -m pytest -q`.

Parallel runs (`make test`: pytest-xdist, one worker more than the cores, `--dist loadscope
--no-loadscope-reorder`): every worker has its own temp dir, dataset cache, redis-server and Redis
Cluster (free ports), and its share of the CPU cores. A module (or class) runs whole on one worker,
so a module-scoped fixture (a bundle trained for the module) is built once; modules go out in
collection order, the heavy service modules first and the many small ones last, so the workers
finish together (the schedule: tests/support/scheduling.py; not `--dist loadgroup`, whose
xdist_group marks pytest >= 9.2 ignores). Session fixtures are built once per worker; ML-100K and
ML-1M are prepared once per run, under a file lock, and copied into each worker's cache. The suite
is hermetic: it reads real data from SEQREC_DATA_DIR, ignores every other SEQREC_* variable of the
caller's environment (no test reaches a Redis or cache it did not start or create) and writes only
to temp dirs of its own.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.redis_cluster import redis_cluster  # noqa: F401  (session fixture: a local Redis Cluster)
from tests.support.data import synthetic_seqdata
from tests.support.locks import exclusive
from tests.support.procs import RedisNotInstalled
from training.data import SeqData
from training.data.readers import default_data_dir

# Datasets whose spec lists no files (`prepare` falls back to a download): any one of these is enough.
PROBES = {"ml-1m": ("ml-1m/ml-1m.sasrec.txt", "ml-1m/ratings.dat"), "ml-1m-ratings": ("ml-1m/ratings.dat",)}
REAL_DATA_FIXTURES = {"data_dir": "ml-100k", "ml100k": "ml-100k", "ml1m": "ml-1m"}
SKIP_PREFIX = "real data:"
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # "gw0", "gw1", ... in a pytest-xdist worker, else None

# The caller's service settings (a SEQREC_REDIS_URL pointing at a real Redis, a SEQREC_CACHE_DIR with
# someone's prepared datasets) must not reach the tests nor the processes they start.
for _var in [v for v in os.environ if v.startswith("SEQREC_") and v != "SEQREC_DATA_DIR"]:
    del os.environ[_var]


def dataset_present(name: str) -> bool:
    """Every file the dataset's spec lists (what `prepare` checks first) is in the data dir; no download."""
    from training.data import DATASETS

    d = default_data_dir()
    if name in PROBES:
        return any((d / f).is_file() for f in PROBES[name])
    return all((d / f).is_file() for f in DATASETS[name].files)


def _skip_reason(name: str) -> str:
    return (
        f"{SKIP_PREFIX} {name} not found under {default_data_dir().resolve()} "
        "(set SEQREC_DATA_DIR to a directory that holds it)"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "real_data(name='ml-100k'): needs a real dataset; skipped with the reason when it is not found"
    )
    if XDIST_WORKER:
        _share_cores(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # optional: a run without xdist has no such hook
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadscope` that runs every item of a module (tests/support/scheduling.py)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from tests.support.scheduling import ModuleScheduling

    return ModuleScheduling(config, log)


def _share_cores(workers: int) -> None:
    """Each worker's torch / BLAS / OpenMP threads get its share of the cores (and so do the processes it
    starts): two workers each running cores-many threads would oversubscribe the machine and spin."""
    share = max(1, len(os.sched_getaffinity(0)) // workers)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(share))
    import torch

    torch.set_num_threads(share)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        needed = {REAL_DATA_FIXTURES[f] for f in getattr(item, "fixturenames", ()) if f in REAL_DATA_FIXTURES}
        for mark in item.iter_markers("real_data"):
            needed.add(mark.args[0] if mark.args else "ml-100k")
        if needed and not item.get_closest_marker("real_data"):
            item.add_marker(pytest.mark.real_data(*sorted(needed)[:1]))
        missing = sorted(n for n in needed if not dataset_present(n))
        if missing:
            item.add_marker(pytest.mark.skip(reason=_skip_reason(", ".join(missing))))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    real = [r for r in skipped if SKIP_PREFIX in str(r.longrepr)]
    if real:
        terminalreporter.write_line(
            f"real-data tests: {len(real)} skipped, datasets not found under {default_data_dir().resolve()}; "
            "set SEQREC_DATA_DIR (or put them in ../shared/data) to run them",
            yellow=True,
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    try:
        return (yield)
    except RedisNotInstalled as exc:
        pytest.skip(str(exc))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    try:
        return (yield)
    except RedisNotInstalled as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def synthetic() -> SeqData:
    """300 users, 120 items, 6-40 events each (tests/support/data.py)."""
    return synthetic_seqdata()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = default_data_dir()
    if not dataset_present("ml-100k"):
        pytest.skip(_skip_reason("ml-100k"))
    return d


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The dataset cache of this worker (of the whole run without xdist), SEQREC_CACHE_DIR for everything
    the tests run, so that nothing is written to the checkout's .seqrec_cache and workers share no files."""
    path = tmp_path_factory.mktemp("seqrec_cache")
    os.environ["SEQREC_CACHE_DIR"] = str(path)
    yield path
    os.environ.pop("SEQREC_CACHE_DIR", None)


@pytest.fixture(scope="session")
def run_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache every worker of this run shares (the run's temp dir is the parent of each worker's);
    write to it only under `exclusive`. Without xdist it belongs to the one process."""
    base = tmp_path_factory.getbasetemp()
    path = (base.parent if XDIST_WORKER else base) / "shared_seqrec_cache"
    path.mkdir(exist_ok=True)
    return path


def _prepared(name: str, data_dir: Path, cache_dir: Path, run_cache_dir: Path) -> SeqData:
    """`prepare(name)` once per run: the first worker builds the cache file under the lock, the others
    wait and read it. The file is copied into this worker's cache too, for the processes tests start."""
    from training.data import prepare

    with exclusive(run_cache_dir / f"{name}.lock"):
        data = prepare(name, data_dir, run_cache_dir)
    for f in run_cache_dir.glob(f"{name}.v*.npz"):
        if not (cache_dir / f.name).exists():
            shutil.copyfile(f, cache_dir / f.name)
    return data


@pytest.fixture(scope="session")
def ml100k(data_dir: Path, cache_dir: Path, run_cache_dir: Path) -> SeqData:
    return _prepared("ml-100k", data_dir, cache_dir, run_cache_dir)


@pytest.fixture(scope="session")
def ml1m(cache_dir: Path, run_cache_dir: Path) -> SeqData:
    if not dataset_present("ml-1m"):
        pytest.skip(_skip_reason("ml-1m"))
    return _prepared("ml-1m", default_data_dir(), cache_dir, run_cache_dir)
