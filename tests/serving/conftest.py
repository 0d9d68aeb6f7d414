"""Serving fixtures: one really trained + exported model (session), tiny random-init exports.

`trained` trains STAR + LLM4MSR for one epoch on the ranker tests' tiny dataset with an 8-dim
random knowledge snapshot (5 users without knowledge), then exports it through the CLI with
float16 and int8 variants. Tests must not modify its folders.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from feature_store.offline_store import OfflineStore
from llm4msr.config import ServeConfig, StoreConfig, load_config
from tests.ranker.helpers import FAST_TRAIN, make_dataset, make_snapshot

torch.set_num_threads(1)

DIM = 8


@dataclass
class Trained:
    data_dir: Path
    knowledge_root: Path  # offline store root
    snapshot_dir: Path  # its current snapshot
    run_dir: Path
    model_dir: Path


def store_cfg(**kw: object) -> StoreConfig:
    """Float32 values (so online scores equal offline ones bit for bit) and short timeouts."""
    base = {"value_dtype": "float32", "timeout_ms": 200, "retries": 0, "backoff_ms": 0, "pointer_cache_ms": 0}
    return StoreConfig.model_validate(base | kw)


def serve_cfg(**kw: object) -> ServeConfig:
    return ServeConfig.model_validate({"version_check_seconds": 0.0, "warmup_requests": 1} | kw)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    from pipelines.cli import main
    from ranker.train import train

    base = tmp_path_factory.mktemp("serving")
    data_dir, _ = make_dataset(base / "data")
    kroot = make_snapshot(base / "knowledge", data_dir, dim=DIM)
    snapshot_dir = OfflineStore(kroot).current_path()
    assert snapshot_dir is not None
    settings = load_config(overrides=[*FAST_TRAIN, "train.backbone=star"])
    run_dir = base / "run"
    train(settings, data_dir, kroot, run_dir)
    model_dir = base / "model"
    rc = main(["export", "--run", str(run_dir), "--out", str(model_dir), "--variants", "float16,int8"])
    assert rc == 0
    return Trained(data_dir, kroot, snapshot_dir, run_dir, model_dir)


@pytest.fixture
def no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ServeConfig().token_env, raising=False)


def env_without_token() -> dict[str, str]:
    env = dict(os.environ)
    env.pop(ServeConfig().token_env, None)
    return env
