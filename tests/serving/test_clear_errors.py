"""Broken model directories through `llm4msr serve` (exit 2, one line naming file and key, no
traceback, no server), and one error shape for every HTTP error, counted in the request metric."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from feature_store.materialize import materialize
from feature_store.online import open_store
from llm4msr.atomic import sha256_file
from ranker.serving.http import create_app
from ranker.serving.runtime import Ranker
from tests.fixtures.redis_server import free_port
from tests.serving.conftest import env_without_token, serve_cfg, store_cfg
from tests.serving.test_http import LLM4MSR


def _broken_model(trained, tmp_path: Path, edit: Callable[[Path, dict], None]) -> Path:  # noqa: ANN001
    model = tmp_path / "model"
    shutil.copytree(trained.model_dir, model)
    manifest = json.loads((model / "manifest.json").read_text())
    edit(model, manifest)
    (model / "manifest.json").write_text(json.dumps(manifest))
    return model


def _damage_users(model: Path, manifest: dict) -> None:
    path = model / manifest["lookups"]["users"]["file"]
    path.write_bytes(path.read_bytes()[:-40] + b"\0" * 40)
    manifest["lookups"]["users"]["sha256"] = sha256_file(path)  # damaged before it was sealed


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d, m: m.pop("lookups"), "manifest.json: key 'lookups' is missing; expected"),
        (lambda d, m: m["lookups"].pop("items"), "manifest.json: key 'lookups.items' is missing; expected"),
        (
            lambda d, m: m.pop("model"),
            "manifest.json: key 'model' is missing; expected the ONNX file's entry",
        ),
        (_damage_users, "users.parquet: cannot read lookup table"),
    ],
)
def test_serve_refuses_a_broken_model_in_one_line(trained, tmp_path: Path, edit, expected: str) -> None:  # noqa: ANN001
    """Before: KeyError tracebacks (exit 1) for a manifest without `lookups` or `model`."""
    model = _broken_model(trained, tmp_path, edit)
    cmd = [
        LLM4MSR,
        "serve",
        "--model",
        str(model),
        "--store",
        str(tmp_path / "s"),
        "--port",
        str(free_port()),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env_without_token())
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and "Traceback" not in out.stderr and len(lines) == 1, out.stderr[-2000:]
    assert lines[0].startswith("llm4msr serve: error: ") and expected in lines[0], lines[0]


def test_every_http_error_has_one_shape_and_is_counted(trained, tmp_path: Path) -> None:  # noqa: ANN001
    url = str(tmp_path / "online")
    materialize(trained.snapshot_dir, url, store_cfg())
    ranker = Ranker(trained.model_dir, open_store(url, store_cfg()), serve_cfg())
    try:
        client = TestClient(create_app(ranker))
        r = client.get("/nope")  # before: {"detail": "Not Found"}, not counted
        assert r.status_code == 404 and set(r.json()) == {"error"}
        assert "no endpoint '/nope'" in r.json()["error"] and "POST /score" in r.json()["error"]
        r = client.get("/score")  # before: {"detail": "Method Not Allowed"}
        assert r.status_code == 405 and r.json() == {"error": "method GET is not allowed on /score; use POST"}
        assert r.headers["allow"] == "POST"
        r = client.post("/healthz")
        assert r.status_code == 405 and set(r.json()) == {"error"}
        r = client.post("/score", json={"user_id": "u1", "scenario_id": "s0"})
        assert r.status_code == 422 and set(r.json()) == {"error"} and "item_ids" in r.json()["error"]
        text = client.get("/metrics").text
        for line in (
            'llm4msr_requests_total{code="404",endpoint="other"} 1.0',
            'llm4msr_requests_total{code="405",endpoint="/score"} 1.0',
            'llm4msr_requests_total{code="405",endpoint="/healthz"} 1.0',
            'llm4msr_requests_total{code="422",endpoint="/score"} 1.0',
        ):
            assert line in text, text
    finally:
        ranker.close()
