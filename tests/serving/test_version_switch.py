"""Knowledge version switches while serving (issue 12): every answer scores with the user AND
scenario knowledge of the one version it names, also when the pointer is re-checked inside the
store's pointer-cache window; a version whose scenario vectors cannot be read is not adopted.
Real stores (local files, real redis-server), a real exported model."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from feature_store.knowledge_snapshot import load_snapshot
from feature_store.materialize import materialize
from feature_store.offline_store import OfflineStore
from feature_store.online import open_store
from ranker.serving.http import create_app
from ranker.serving.runtime import Ranker
from tests.ranker.helpers import make_snapshot
from tests.serving.conftest import DIM, serve_cfg, store_cfg

ITEMS = ["i1", "i2", "i3"]
REQUESTS = [("u10", "s0"), ("u11", "s1"), ("u12", "s2"), ("u0", "s1")]  # u0 has no vector (fallback)
CACHE_MS = 60_000  # a pointer-cache window far longer than any test: the race is deterministic


@pytest.fixture(params=["local", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "online")
    return request.getfixturevalue("redis_server").url


@pytest.fixture
def versions(trained, tmp_path: Path) -> dict[str, Path]:  # noqa: ANN001
    """Two snapshots of the same knowledge family with different vectors, plus one that lacks a
    scenario's vector (not adoptable): {snapshot id: folder}."""
    out = {"a": trained.snapshot_dir}
    for name, kw in (("b", {"seed": 7}), ("broken", {"seed": 8, "drop_scenarios": 1})):
        out[name] = OfflineStore(
            make_snapshot(tmp_path / name, trained.data_dir, dim=DIM, **kw)
        ).current_path()
    return out


def offline_scores(ranker: Ranker, snapshot: Path, user: str, scenario: str) -> np.ndarray:
    """What the exported model gives with exactly this snapshot's vectors."""
    snap = load_snapshot(snapshot)
    uids, uvec = snap.vectors_of("user")
    sids, svec = snap.vectors_of("scenario")
    n = len(ITEMS)
    has = user in uids
    x = {
        "sparse_ids": ranker.artifact.assembler.build(user, scenario, ITEMS),
        "user_knowledge": np.repeat(
            (uvec[uids.index(user)] if has else np.zeros(DIM, np.float32))[None], n, 0
        ),
        "user_has_knowledge": np.full(n, float(has), np.float32),
        "scenario_knowledge": np.repeat(svec[sids.index(scenario)][None], n, 0),
    }
    return ranker.session.run(None, x)[0].reshape(-1)


def scenario_matrix(ranker: Ranker, snapshot: Path) -> np.ndarray:
    sids, svec = load_snapshot(snapshot).vectors_of("scenario")
    out = np.zeros_like(ranker.scenario_vectors)
    for s, v in zip(sids, svec, strict=True):
        out[ranker.scenario_vocab[s]] = v
    return out


def metric(ranker: Ranker, name: str) -> float:
    return ranker.metrics.registry.get_sample_value(name) or 0.0


@pytest.mark.redis
def test_switches_under_load_score_with_the_named_version(trained, url: str, versions) -> None:  # noqa: ANN001
    writer = open_store(
        url, store_cfg()
    )  # another process's view: its switches do not touch the reader's cache
    a, b = versions["a"].name, versions["b"].name
    for v in ("b", "a"):
        materialize(versions[v], writer, store_cfg())
    ranker = Ranker(trained.model_dir, open_store(url, store_cfg(pointer_cache_ms=200)), serve_cfg())
    expected = {
        (v, u, s): offline_scores(ranker, versions[k], u, s)
        for k, v in (("a", a), ("b", b))
        for u, s in REQUESTS
    }
    answers: list[tuple[str | None, str | None, str, str, np.ndarray]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def load() -> None:  # bounded: at most 3000 requests and 20 s
        deadline = time.monotonic() + 20
        try:
            for i in range(3000):
                if stop.is_set() or time.monotonic() > deadline:
                    return
                user, scen = REQUESTS[i % len(REQUESTS)]
                res = ranker.score_detailed(user, scen, ITEMS)
                answers.append((res.knowledge_version, res.fallback, user, scen, res.scores))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    client = TestClient(create_app(ranker))
    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        for i in range(8):  # switch back and forth, each followed at once by GET /readyz (no token)
            writer.set_current(b if i % 2 == 0 else a)
            assert client.get("/readyz").status_code == 200
            time.sleep(0.5)  # > the reader's pointer cache: requests see each switch
    finally:
        stop.set()
        worker.join(timeout=30)
    assert not worker.is_alive() and not errors, errors
    assert len(answers) >= 40 and {v for v, *_ in answers} == {a, b}, len(answers)
    for version, fallback, user, scen, scores in answers:
        assert fallback == ("missing" if user == "u0" else None), (version, user, fallback)
        np.testing.assert_allclose(
            scores, expected[(version, user, scen)], atol=1e-5, rtol=0, err_msg=f"{version} {user} {scen}"
        )
    assert metric(ranker, "llm4msr_knowledge_versions_rejected_total") == 0
    ranker.close()


@pytest.mark.redis
@pytest.mark.parametrize("trigger", ["readyz", "periodic"])
def test_recheck_inside_the_pointer_cache_window(trained, url: str, versions, trigger: str) -> None:  # noqa: ANN001
    """Switch, then re-check at once while the reader's pointer cache still names the old version:
    the scenario vectors and the user vectors served are the new version's."""
    writer = open_store(url, store_cfg())
    materialize(versions["a"], writer, store_cfg())
    check_s = 3600.0 if trigger == "readyz" else 0.0
    ranker = Ranker(
        trained.model_dir,
        open_store(url, store_cfg(pointer_cache_ms=CACHE_MS)),
        serve_cfg(version_check_seconds=check_s),
    )
    first = ranker.score_detailed("u10", "s1", ITEMS)  # fills the reader's pointer cache with version a
    assert first.knowledge_version == versions["a"].name
    materialize(versions["b"], writer, store_cfg())
    if trigger == "readyz":
        ready = TestClient(create_app(ranker)).get("/readyz")
        assert ready.status_code == 200 and ready.json()["knowledge_version"] == versions["b"].name
    res = ranker.score_detailed("u10", "s1", ITEMS)  # "periodic": this request's check reloads
    np.testing.assert_array_equal(ranker.scenario_vectors, scenario_matrix(ranker, versions["b"]))
    assert res.knowledge_version == versions["b"].name and res.fallback is None
    np.testing.assert_allclose(
        res.scores, offline_scores(ranker, versions["b"], "u10", "s1"), atol=1e-5, rtol=0
    )
    assert metric(ranker, "llm4msr_knowledge_version_changes_total") == 1
    ranker.close()


@pytest.mark.redis
def test_empty_redis_restart_then_rematerialize(trained, redis_server, versions) -> None:  # noqa: ANN001
    """Redis restarted empty, re-checked (no version), re-materialized, re-checked inside the
    pointer-cache window: the scenario vectors are the snapshot's, not zeros."""
    materialize(versions["a"], redis_server.url, store_cfg())
    ranker = Ranker(
        trained.model_dir,
        open_store(redis_server.url, store_cfg(pointer_cache_ms=CACHE_MS)),
        serve_cfg(version_check_seconds=3600.0),
    )
    expected = offline_scores(ranker, versions["a"], "u10", "s0")
    redis_server.stop()
    redis_server.start()
    ok, details = ranker.readiness()
    assert not ok and details["store_version"] is None
    assert ranker.score_detailed("u10", "s0", ITEMS).fallback == "no_version"
    materialize(versions["a"], redis_server.url, store_cfg())
    assert ranker.readiness()[0]
    np.testing.assert_array_equal(ranker.scenario_vectors, scenario_matrix(ranker, versions["a"]))
    res = ranker.score_detailed("u10", "s0", ITEMS)
    assert res.fallback is None
    np.testing.assert_allclose(res.scores, expected, atol=1e-5, rtol=0)
    ranker.close()


@pytest.mark.redis
def test_version_without_all_scenario_vectors_is_not_adopted(trained, url: str, versions, caplog) -> None:  # noqa: ANN001
    writer = open_store(url, store_cfg())
    materialize(versions["a"], writer, store_cfg())
    ranker = Ranker(trained.model_dir, open_store(url, store_cfg()), serve_cfg(version_check_seconds=3600.0))
    before = ranker.score_detailed("u10", "s1", ITEMS)
    materialize(versions["broken"], writer, store_cfg())  # same family, one scenario has no vector
    ok, details = ranker.readiness()
    assert ok and details["knowledge_version"] == versions["a"].name  # still serving the last good one
    assert details["store_version"] == versions["broken"].name and "not adopted" in details["problem"]
    assert any("not adopted" in r.getMessage() and "still serving" in r.getMessage() for r in caplog.records)
    assert metric(ranker, "llm4msr_knowledge_versions_rejected_total") == 1
    res = ranker.score_detailed("u10", "s1", ITEMS)
    assert res.knowledge_version == versions["a"].name
    np.testing.assert_array_equal(res.scores, before.scores)
    np.testing.assert_array_equal(ranker.scenario_vectors, scenario_matrix(ranker, versions["a"]))
    assert writer.rollback() == versions["a"].name  # back to the version served: no problem left
    ok, details = ranker.readiness()
    assert ok and details["knowledge_version"] == versions["a"].name and "problem" not in details
    # The next version that can be read is adopted as usual.
    materialize(versions["b"], writer, store_cfg())
    assert (
        ranker.readiness()[1]["knowledge_version"] == versions["b"].name
        and "problem" not in ranker.readiness()[1]
    )
    ranker.close()
    # A server that starts on such a version serves fallback knowledge and is not ready.
    writer.set_current(versions["broken"].name)
    fresh = Ranker(trained.model_dir, open_store(url, store_cfg()), serve_cfg())
    assert fresh.score_detailed("u10", "s1", ITEMS).fallback == "no_version"
    ok, details = fresh.readiness()
    assert not ok and "not adopted: no readable vector for scenario(s)" in details["problem"]
    fresh.close()
