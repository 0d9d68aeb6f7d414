"""The HTTP server: request validation (never a 500 for bad input), bearer token, health/readiness/
metrics, and a real `llm4msr serve` process on a free loopback port against a real Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from feature_store.materialize import materialize
from feature_store.online import open_store
from ranker.serving.http import create_app
from ranker.serving.runtime import Ranker
from tests.fixtures.redis_server import free_port
from tests.serving.conftest import env_without_token, serve_cfg, store_cfg

LLM4MSR = str(Path(sys.executable).parent / "llm4msr")  # the installed console script


@pytest.fixture
def local_ranker(trained, tmp_path: Path) -> Ranker:  # noqa: ANN001
    url = str(tmp_path / "online")
    materialize(trained.snapshot_dir, url, store_cfg())
    ranker = Ranker(trained.model_dir, open_store(url, store_cfg()), serve_cfg(max_candidates=50))
    yield ranker
    ranker.close()


def test_score_and_validation(local_ranker: Ranker) -> None:
    client = TestClient(create_app(local_ranker))
    r = client.post("/score", json={"user_id": "u10", "scenario_id": "s0", "item_ids": ["i1", "i2", 3]})
    assert r.status_code == 200, r.text
    body = r.json()
    np.testing.assert_allclose(body["scores"], local_ranker.score("u10", "s0", ["i1", "i2", "3"]), atol=1e-7)
    assert body["fallback"] is None and body["knowledge_version"]

    bad = [
        ({"user_id": "u1", "scenario_id": "nope", "item_ids": ["i1"]}, 422, "unknown scenario_id 'nope'"),
        ({"user_id": "u1", "scenario_id": "s0", "item_ids": []}, 422, "item_ids is empty"),
        ({"user_id": "u1", "scenario_id": "s0", "item_ids": ["i1"] * 51}, 413, "serve.max_candidates=50"),
        ({"scenario_id": "s0", "item_ids": ["i1"]}, 422, "user_id: Field required"),
        ({"user_id": "u1", "scenario_id": "s0", "item_ids": "i1"}, 422, "item_ids"),
        ({"user_id": "u1", "scenario_id": "s0", "item_ids": [None]}, 422, "item_ids.0"),
        ({"user_id": "u1", "scenario_id": "s0", "item_ids": ["i1"], "extra": 1}, 422, "extra"),
        (
            {"user_id": "u1", "scenario_id": "s0", "item_ids": ["i1"], "features": {"x": [1]}},
            422,
            "features.x",
        ),
    ]
    for payload, status, text in bad:
        r = client.post("/score", json=payload)
        assert r.status_code == status, (payload, r.text)
        assert text in r.json()["error"], r.json()
    for raw in (b"{not json", b"", b"[1, 2]", b"null"):
        r = client.post("/score", content=raw, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, (raw, r.status_code, r.text)
        assert r.json()["error"]
    assert (
        client.post("/score", content=b"{not json", headers={"content-type": "application/json"}).status_code
        == 400
    )

    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["knowledge_agrees"] is True
    text = client.get("/metrics").text
    assert 'llm4msr_requests_total{code="200",endpoint="/score"} 1.0' in text
    assert 'llm4msr_requests_total{code="422",endpoint="/score"}' in text
    assert "llm4msr_request_latency_seconds_bucket" in text and "llm4msr_store_errors_total 0.0" in text


def test_bearer_token(local_ranker: Ranker) -> None:
    client = TestClient(create_app(local_ranker, token="s3cret"))
    payload = {"user_id": "u10", "scenario_id": "s0", "item_ids": ["i1"]}
    assert client.post("/score", json=payload).status_code == 401
    assert client.post("/score", json=payload, headers={"Authorization": "Bearer wrong"}).status_code == 401
    # The token is checked before the body: an unauthenticated caller gets 401, not validation details.
    assert client.post("/score", json={"x": 1}).status_code == 401
    r = client.post("/score", json=payload, headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200 and len(r.json()["scores"]) == 1
    assert client.get("/healthz").status_code == 200


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"server exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}"
            )
        try:
            if httpx.get(url, timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout}s")


@pytest.mark.slow
@pytest.mark.redis
def test_real_server_process(trained, redis_server, tmp_path: Path) -> None:  # noqa: ANN001
    materialize(trained.snapshot_dir, redis_server.url, store_cfg())
    port = free_port()
    env = env_without_token() | {"LLM4MSR_SERVE_TOKEN": "tok"}
    cmd = [
        LLM4MSR,
        "serve",
        "--model",
        str(trained.model_dir),
        "--store",
        redis_server.url,
        "--port",
        str(port),
        "--set",
        "store.value_dtype=float32",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_http(base + "/healthz", proc)
        assert httpx.get(base + "/readyz").json()["ready"] is True
        payload = {"user_id": "u10", "scenario_id": "s2", "item_ids": ["i1", "i5", "i9"]}
        assert httpx.post(base + "/score", json=payload).status_code == 401
        r = httpx.post(base + "/score", json=payload, headers={"Authorization": "Bearer tok"})
        assert r.status_code == 200 and r.json()["fallback"] is None
        local = Ranker(trained.model_dir, open_store(redis_server.url, store_cfg()), serve_cfg())
        np.testing.assert_allclose(
            r.json()["scores"], local.score("u10", "s2", ["i1", "i5", "i9"]), atol=1e-6
        )
        redis_server.stop()  # Redis gone: still 200, with fallback; readiness drops
        r = httpx.post(base + "/score", json=payload, headers={"Authorization": "Bearer tok"}, timeout=10)
        assert r.status_code == 200 and r.json()["fallback"] == "store_error"
        assert httpx.get(base + "/readyz", timeout=10).status_code == 503
        assert "llm4msr_store_errors_total" in httpx.get(base + "/metrics").text
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


def test_serve_refuses_bad_model_before_binding(trained, tmp_path: Path) -> None:  # noqa: ANN001
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text("{}")
    port = free_port()
    cmd = [LLM4MSR, "serve", "--model", str(bad), "--store", str(tmp_path / "s"), "--port", str(port)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env_without_token())
    assert out.returncode == 2
    assert "manifest.json: format_version None, expected 1" in out.stderr
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
