"""Deployments against a real `prefect server` on loopback: registered, scheduled, on the work pool."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from llm4msr.config import load_config
from pipelines.flows.deployments import deployment_specs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_specs_follow_the_config() -> None:
    s = load_config(None, ["pipelines.train_cron=30 5 * * *", "pipelines.timezone=Europe/Paris"])
    specs = {x.full_name: x for x in deployment_specs(s, None, ["train.epochs=2"])}
    assert specs["train/after-knowledge"].cron == "30 5 * * *"
    assert specs["nightly-knowledge/nightly"].cron == "0 2 * * *"
    assert specs["feature-refresh/hourly"].cron == "0 * * * *"
    assert specs["nightly-knowledge/nightly"].parameters == {
        "config": None,
        "overrides": ["train.epochs=2"],
        "full": False,
    }


def test_deploy_without_server_is_a_clear_error(tmp_path: Path) -> None:
    # a subprocess: in this session the test harness may have pointed Prefect at its own API
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path)
    out = subprocess.run(
        [str(Path(sys.executable).parent / "llm4msr"), "flow", "deploy"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "PREFECT_API_URL is not set" in out.stderr


@pytest.mark.slow
def test_deployments_on_a_real_prefect_server(tmp_path: Path) -> None:
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    prefect = str(Path(sys.executable).parent / "prefect")
    server = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, "prefect server exited"
            assert time.monotonic() < deadline, "prefect server did not become healthy in 180 s"
            time.sleep(1)
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text("pipelines:\n  timezone: Europe/Paris\n  work_pool: test-pool\n")
        out = subprocess.run(
            [str(Path(sys.executable).parent / "llm4msr"), "flow", "deploy", "--config", str(cfg)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        deployments = httpx.post(f"{api}/deployments/filter", json={}, timeout=30).json()
        by_name = {d["name"]: d for d in deployments}
        assert set(by_name) == {"nightly", "after-knowledge", "hourly"}
        crons = {
            n: [(s["schedule"]["cron"], s["schedule"]["timezone"], s["active"]) for s in d["schedules"]]
            for n, d in by_name.items()
        }
        assert crons == {
            "nightly": [("0 2 * * *", "Europe/Paris", True)],
            "after-knowledge": [("0 4 * * *", "Europe/Paris", True)],
            "hourly": [("0 * * * *", "Europe/Paris", True)],
        }
        assert {d["work_pool_name"] for d in deployments} == {"test-pool"}
        assert by_name["nightly"]["entrypoint"] == "pipelines.flows.knowledge.nightly_knowledge"
        assert by_name["nightly"]["parameters"]["config"] == str(cfg)
        pool = httpx.get(f"{api}/work_pools/test-pool", timeout=30).json()
        assert pool["type"] == "process"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)


def test_prefect_yaml_is_generated_from_the_config(capsys) -> None:
    """One source for the schedules: deploy/prefect.yaml is what the default config generates."""
    import yaml

    from pipelines.cli import main
    from pipelines.flows.deployments import prefect_yaml

    committed = Path(__file__).resolve().parents[2] / "deploy" / "prefect.yaml"
    assert committed.read_text() == prefect_yaml(load_config(None, [])), (
        "deploy/prefect.yaml drifted from the config; regenerate it with "
        "`llm4msr flow deploy --prefect-yaml > deploy/prefect.yaml`"
    )
    assert main(["flow", "deploy", "--prefect-yaml", "--set", "pipelines.train_cron=30 5 * * *"]) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    crons = {d["name"]: d["schedules"][0]["cron"] for d in doc["deployments"]}
    specs = {s.name: s.cron for s in deployment_specs(load_config(None, ["pipelines.train_cron=30 5 * * *"]))}
    assert crons == specs and crons["after-knowledge"] == "30 5 * * *"
    assert {d["entrypoint"] for d in doc["deployments"]} == {
        "pipelines/flows/knowledge.py:nightly_knowledge",
        "pipelines/flows/train.py:train_flow",
        "pipelines/flows/knowledge.py:feature_refresh",
    }
