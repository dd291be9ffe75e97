"""Bounded fuzzing of every route in the OpenAPI schema (schemathesis) against a real server.

A real uvicorn process with a private Redis: what is fuzzed is the HTTP stack that ships.
Budget: FUZZ_EXAMPLES examples per operation (default 50), derandomized so CI is repeatable.
Every response must be a non-5xx and conform to the schema (status code, content type,
headers, body); every schemathesis default check runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.support.procs import API_KEY, ApiProc, RedisProc

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "50"))


@pytest.fixture(scope="module")
def fuzz_server(deploy_bundles: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProc]:
    work = tmp_path_factory.mktemp("fuzz")
    redis = RedisProc(work / "redis").start()
    api = ApiProc(deploy_bundles, redis.url, work, SEQREC_KEY_PREFIX="fuzz:", SEQREC_MAX_BATCH="50").start()
    yield api
    api.stop()
    redis.kill()


def openapi_spec() -> dict:
    """The schema the server publishes at /openapi.json (built from the same app factory, no lifespan)."""
    from app.main import create_app
    from app.settings import Settings

    return create_app(Settings(bundles=[Path("unused")], api_key="x")).openapi()


schema = schemathesis.openapi.from_dict(openapi_spec())


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_every_route_survives_fuzzing(case, fuzz_server: ApiProc) -> None:
    # positive_data_acceptance is left out: a schema-valid request may still be refused on business
    # grounds with a documented 422 (unknown model name, a reload path that holds no bundle).
    case.call_and_validate(
        base_url=fuzz_server.base,
        headers={"X-API-Key": API_KEY},
        excluded_checks=[schemathesis.checks.positive_data_acceptance],
        timeout=30,
    )


def test_published_schema_is_the_fuzzed_one(fuzz_server: ApiProc) -> None:
    import httpx

    assert httpx.get(f"{fuzz_server.base}/openapi.json").json()["paths"].keys() == openapi_spec()["paths"].keys()
