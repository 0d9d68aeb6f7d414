"""Ranker test fixtures: a tiny hand-built dataset and random-vector knowledge snapshots."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llm4msr.config import Settings, load_config
from tests.ranker.helpers import FAST_TRAIN, make_dataset, make_snapshot

# The CI/dev machine has 2 shared cores; more than one intra-op thread only adds contention here.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out, _ = make_dataset(tmp_path_factory.mktemp("ranker_data") / "data")
    return out


@pytest.fixture(scope="session")
def tiny_knowledge(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """Offline-store root whose CURRENT snapshot has 16-dim random vectors (5 users without one)."""
    return make_snapshot(tmp_path_factory.mktemp("ranker_knowledge") / "store", tiny_data, dim=16)


def fast_settings(*overrides: str) -> Settings:
    return load_config(overrides=[*FAST_TRAIN, *overrides])
