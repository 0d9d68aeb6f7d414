"""Request ids that are not text (NUL, control characters, lone surrogates, empty, too long) are
refused at the edge with 400 naming the field and the value, the same on the local store and on a
real Redis; the stores themselves treat such ids as missing, never as a prefix or a store error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from feature_store.materialize import materialize
from feature_store.online import EntityBatch, open_store
from ranker.serving.http import create_app
from ranker.serving.runtime import Ranker, ScoringRequestError
from tests.serving.conftest import serve_cfg, store_cfg


@pytest.fixture(params=["local", "redis"])
def ranker(request: pytest.FixtureRequest, trained, tmp_path: Path) -> Ranker:  # noqa: ANN001
    url = (
        str(tmp_path / "online") if request.param == "local" else request.getfixturevalue("redis_server").url
    )
    materialize(trained.snapshot_dir, url, store_cfg())
    r = Ranker(trained.model_dir, open_store(url, store_cfg()), serve_cfg())
    yield r
    r.close()


GOOD = {"user_id": "u10", "scenario_id": "s0", "item_ids": ["i1", "i2"]}
# (raw JSON body, field named in the error, text of the value's repr, what is wrong with it)
BAD = [
    (
        b'{"user_id": "u10\\u0000", "scenario_id": "s0", "item_ids": ["i1"]}',
        "user_id",
        r"'u10\x00'",
        "U+0000",
    ),
    (b'{"user_id": "\\ud800", "scenario_id": "s0", "item_ids": ["i1"]}', "user_id", r"'\ud800'", "U+D800"),
    (b'{"user_id": "u10", "scenario_id": "s0\\n", "item_ids": ["i1"]}', "scenario_id", r"'s0\n'", "U+000A"),
    (
        b'{"user_id": "u10", "scenario_id": "s0", "item_ids": ["i1", "i\\u001b2"]}',
        "item_ids[1]",
        r"'i\x1b2'",
        "U+001B",
    ),
    (
        b'{"user_id": "u10", "scenario_id": "s0", "item_ids": ["i1", "\\udc00x"]}',
        "item_ids[1]",
        r"'\udc00x'",
        "U+DC00",
    ),
    (b'{"user_id": "", "scenario_id": "s0", "item_ids": ["i1"]}', "user_id", "''", "is empty"),
    (
        b'{"user_id": "u10", "scenario_id": "s0", "item_ids": ["' + b"i" * 257 + b'"]}',
        "item_ids[0]",
        "'iii",
        "257 characters",
    ),
]


def test_bad_ids_are_400_with_a_clear_message(ranker: Ranker) -> None:
    client = TestClient(create_app(ranker))
    assert client.post("/score", json=GOOD).status_code == 200
    for raw, field, shown, why in BAD:
        r = client.post("/score", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400, (raw, r.text)
        msg = r.json()["error"]
        assert msg.startswith(f"{field} {shown}"), msg
        assert why in msg and "is not a valid id" in msg and "printable characters" in msg, msg
    # Before: on Redis the surrogate became a store error (alert metric, pointer cache cleared);
    # on the local store "u10\0" scored with u10's knowledge. Now neither store is even asked.
    assert ranker.store.counters.as_dict()["errors"] == 0
    metrics = client.get("/metrics").text
    assert "llm4msr_store_errors_total 0.0" in metrics
    assert 'llm4msr_requests_total{code="400",endpoint="/score"} 7.0' in metrics
    with pytest.raises(ScoringRequestError, match=r"user_id 'u10\\x00' is not a valid id"):
        ranker.score("u10\0", "s0", ["i1"])  # the Python API checks the same


def test_stores_miss_ids_they_cannot_hold(ranker: Ranker) -> None:
    store = ranker.store
    uid = next(u for u in ranker.artifact.assembler.users.ids if store.read("user", [u]).found[0])
    r = store.read("user", [uid + "\0", uid, "\ud800", uid + "\0x"])
    assert r.found.tolist() == [False, True, False, False]
    assert r.n_errors == 0 and r.n_missing == 3
    assert np.all(r.vectors[[0, 2, 3]] == 0) and np.any(r.vectors[1] != 0)
    with pytest.raises(ValueError, match=r"kind 'user' entity id 'a\\x00b' cannot be stored"):
        store.write_version(
            "bad-ids",
            knowledge_family="f",
            snapshot_id="bad-ids",
            entities={"user": EntityBatch(np.array(["a\0b"]), np.zeros((1, 8), np.float32), np.zeros(1))},
        )
    assert store.version_info("bad-ids") is None  # nothing written
