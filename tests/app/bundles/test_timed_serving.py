"""A bundle that reads event times, served: the stored times reach the encoder exactly.

The toy model (tests/support/timed.py) answers differently for another gap between the two
newest events, so the served scores equal the bundle's own encoder on (items, times) only when
the store's times, the cache digest and the explanation's ablation all carry the times.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.bundles.bundle import Bundle
from app.main import create_app
from app.settings import Settings
from tests.support.data import synthetic_seqdata
from tests.support.timed import register_toy, toy_bundle

KEY = {"X-API-Key": "k"}


def _expected(bundle: Bundle, items: list[str], times: list[float], k: int) -> tuple[list[str], list[float]]:
    seen, ts = bundle.encode_timed(items, times)
    scores = (bundle.user_vectors([seen], [ts]) @ bundle.vectors(np.arange(1, bundle.manifest.num_items + 1)).T)[0]
    scores[seen - 1] = -np.inf  # exclude_seen
    top = np.argsort(-scores, kind="stable")[:k]
    return bundle.external(top + 1), scores[top].tolist()


@pytest.mark.parametrize("store", ["memory", "redis"])
@pytest.mark.parametrize("cache", [True, False])
def test_served_scores_use_the_stored_times(
    store: str, cache: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    register_toy(monkeypatch)
    data = synthetic_seqdata(num_users=60)
    path, _ = toy_bundle(data, tmp_path)
    bundle = Bundle.load(path)
    items = data.item_ids[:6]
    times = [1_700_000_000.0 + t for t in (0, 40, 100, 3_700, 3_760, 3_900)]
    redis = {"redis_url": redis_url, "key_prefix": key_prefix} if store == "redis" else {}
    settings = Settings(bundles=[path], api_key="k", user_cache=cache, **redis)
    with TestClient(create_app(settings)) as client:
        events = [
            {"user_id": "u1", "item_id": i, "timestamp": t, "event_id": f"e{n}"}
            for n, (i, t) in enumerate(zip(items, times, strict=True))
        ]
        assert client.post("/events", json={"events": events[::-1]}, headers=KEY).status_code == 200  # any order
        for _ in range(2):  # the second read may come from the user-vector cache
            body = client.get("/recommend/u1", params={"k": 5}).json()
            want_ids, want_scores = _expected(bundle, items, times, 5)
            assert [x["item_id"] for x in body["items"]] == want_ids
            np.testing.assert_allclose([x["score"] for x in body["items"]], want_scores, atol=1e-4)
        # A late event (an earlier time) changes the newest gap only if it lands last; here it lands
        # between the two newest, so the gap changes and so must the answer.
        late = {"user_id": "u1", "item_id": data.item_ids[7], "timestamp": times[-1] - 5, "event_id": "late"}
        assert client.post("/events", json={"events": [late]}, headers=KEY).status_code == 200
        body = client.get("/recommend/u1", params={"k": 5, "explain": "true"}).json()
        items2 = [*items[:-1], data.item_ids[7], items[-1]]
        times2 = [*times[:-1], times[-1] - 5, times[-1]]
        want_ids, want_scores = _expected(bundle, items2, times2, 5)
        assert [x["item_id"] for x in body["items"]] == want_ids
        np.testing.assert_allclose([x["score"] for x in body["items"]], want_scores, atol=1e-4)
        assert all(isinstance(x["because"], list) for x in body["items"])
        assert any(x["because"] for x in body["items"])
