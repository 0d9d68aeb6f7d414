"""A Redis password in `store.url` is never printed or persisted (config show, run config.yaml,
flow parameters, status), and the store still authenticates, against a real password-protected
redis-server, with the password from the URL or from store.password_env."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from feature_store.materialize import materialize
from feature_store.online import StoreError, open_store
from llm4msr.config import StoreConfig, dump_config, load_config
from llm4msr.secrets import redact, split_password
from pipelines.cli import UserError
from pipelines.commands.flow import flow_overrides
from ranker.model_io import run_config_text

LLM4MSR = str(Path(sys.executable).parent / "llm4msr")
SECRET = "s3cr3t-Pa55"
ENV = StoreConfig().password_env


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LLM4MSR, *args], capture_output=True, text=True, timeout=120, env=env or _env_without_password()
    )


def _env_without_password() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != ENV}


def test_redact() -> None:
    assert redact(f"redis://:{SECRET}@h:6379/0") == "redis://:***@h:6379/0"
    assert redact(f"rediss://app:{SECRET}@h:6380/2?ssl_cert_reqs=required") == (
        "rediss://app:***@h:6380/2?ssl_cert_reqs=required"
    )
    assert (
        redact(f"unix:///run/redis.sock?db=0&password={SECRET}") == "unix:///run/redis.sock?db=0&password=***"
    )
    assert redact(f"see redis://:{SECRET}@a/0 and redis://b/1") == "see redis://:***@a/0 and redis://b/1"
    for plain in ("artifacts/online_store", "redis://h:6379/0", "redis://app@h/0", "tcp://scheduler:8786"):
        assert redact(plain) == plain
    assert split_password(f"redis://app:{SECRET.replace('-', '%2D')}@h/0") == (
        "redis://app@h/0",
        SECRET,
        False,
    )
    assert split_password("redis://:***@h/0") == ("redis://h/0", None, True)


def test_config_show_and_dumped_configs_hold_no_password(tmp_path: Path) -> None:
    url = f"redis://:{SECRET}@127.0.0.1:6379/0"
    out = _cli("config", "show", "--set", f"store.url={url}")
    assert out.returncode == 0, out.stderr
    assert SECRET not in out.stdout + out.stderr and "url: redis://:***@127.0.0.1:6379/0" in out.stdout
    cfg_file = tmp_path / "prod.yaml"
    cfg_file.write_text(f"store:\n  url: {url}\n")
    out = _cli("config", "show", "--config", str(cfg_file))
    assert out.returncode == 0 and SECRET not in out.stdout and "redis://:***@" in out.stdout
    # A config error quoting the value does not show it either (exit 2, one line per problem).
    out = _cli("config", "show", "--set", f"store={url}")
    assert out.returncode == 2 and SECRET not in out.stderr and "redis://:***@" in out.stderr
    assert "Traceback" not in out.stderr

    settings = load_config(cfg_file)
    assert settings.store.url == url  # in memory the password is there: the store needs it
    for text in (dump_config(settings), run_config_text(settings, None, tmp_path / "data")):
        assert SECRET not in text and "redis://:***@127.0.0.1:6379/0" in text  # a run's config.yaml


def test_flow_parameters_hold_no_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    got = flow_overrides([f"store.url=redis://:{SECRET}@h:6379/0", "train.epochs=1"], ENV)
    assert got == ["store.url=redis://:***@h:6379/0", "train.epochs=1"]
    assert os.environ[ENV] == SECRET  # the in-process flow's store reads it from there
    with pytest.raises(UserError, match=r"store\.url=redis://:\*\*\*@h/0: a password in an override") as exc:
        flow_overrides([f"store.url=redis://:{SECRET}@h/0"], ENV, deploy=True)
    assert SECRET not in str(exc.value)
    out = _cli("flow", "deploy", "--dry-run", "--set", f"store.url=redis://:{SECRET}@h/0")
    assert out.returncode == 2 and SECRET not in out.stdout + out.stderr and ENV in out.stderr


@pytest.fixture
def protected_redis(redis_server):  # noqa: ANN001, ANN201
    redis_server.client().config_set("requirepass", SECRET)
    return redis_server


def test_store_authenticates_from_url_or_env(
    protected_redis, snapshot_factory, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN001
    monkeypatch.delenv(ENV, raising=False)
    port = protected_redis.port
    with_pw, bare = f"redis://:{SECRET}@127.0.0.1:{port}/0", f"redis://127.0.0.1:{port}/0"
    snap, _ = snapshot_factory("v1", n_users=5)
    cfg = StoreConfig(retries=0, pointer_cache_ms=0)
    report = materialize(snap, with_pw, cfg)  # the password from the URL
    assert SECRET not in report.store and report.version == "v1"
    with open_store(with_pw, cfg) as store:
        assert SECRET not in store.redacted_url and SECRET not in str(store.status())

    store = open_store(bare, cfg)
    with pytest.raises(StoreError, match=rf"refused the credentials .*environment variable {ENV}") as exc:
        store.current()
    store.close()
    assert SECRET not in str(exc.value)
    redacted = redact(with_pw)  # as found in a dumped config.yaml
    with pytest.raises(
        StoreError, match=rf"password is redacted \(\*\*\*\), and the environment variable {ENV}"
    ):
        open_store(redacted, cfg)

    monkeypatch.setenv(ENV, SECRET)  # store.password_env: the preferred way
    for url in (bare, redacted):
        with open_store(url, cfg) as store:
            assert store.current().version == "v1" and store.read("user", ["u00001"]).found.all()
    out = _cli("store", "status", "--store", bare, env=_env_without_password() | {ENV: SECRET})
    assert out.returncode == 0 and "current:  v1" in out.stdout
    out = _cli("store", "status", "--store", with_pw)
    assert out.returncode == 0 and SECRET not in out.stdout + out.stderr
