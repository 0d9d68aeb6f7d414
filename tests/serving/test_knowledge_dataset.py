"""Export and serving keep knowledge to the dataset it was built from.

Export refuses a dataset whose id differs from the run's snapshot; the exported manifest records
the snapshot's dataset ids; serving refuses a store whose knowledge comes from another dataset
source, and accepts a newer snapshot of the same source (what a feature refresh publishes).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feature_store.dataset import load_dataset
from feature_store.knowledge_snapshot import read_manifest
from feature_store.materialize import materialize
from feature_store.offline_store import OfflineStore
from feature_store.online import open_store
from pipelines.cli import main
from ranker.serving import artifact as A
from ranker.serving.runtime import KnowledgeMismatchError, Ranker
from tests.ranker.helpers import make_dataset, make_snapshot
from tests.serving.conftest import DIM, serve_cfg, store_cfg


def test_manifest_records_the_knowledge_dataset(trained) -> None:  # noqa: ANN001
    knowledge = json.loads((trained.model_dir / A.MANIFEST_FILE).read_text())["knowledge"]
    snap = read_manifest(trained.snapshot_dir)
    ds = load_dataset(trained.data_dir)
    assert knowledge["dataset_version"] == snap["dataset_version"] == ds.version()
    assert knowledge["dataset_source"] == snap["dataset_source"] == ds.source_id()
    assert knowledge["foreign"] is False


def test_export_refuses_another_dataset_naming_both_ids(trained, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    other, _ = make_dataset(tmp_path / "other", seed=1)  # same ids and scenarios, other rows
    out = tmp_path / "model"
    assert main(["export", "--run", str(trained.run_dir), "--data", str(other), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert load_dataset(other).version() in err and load_dataset(trained.data_dir).version() in err
    assert not out.exists()


def test_serving_refuses_knowledge_of_another_dataset_source(trained, tmp_path: Path) -> None:  # noqa: ANN001
    other, _ = make_dataset(tmp_path / "other", seed=1)
    root = make_snapshot(tmp_path / "k-other", other, dim=DIM)  # same family, another source
    url = str(tmp_path / "online")
    materialize(OfflineStore(root).current_path(), url, store_cfg())
    assert open_store(url, store_cfg()).current().dataset_source == load_dataset(other).source_id()
    with pytest.raises(KnowledgeMismatchError, match=r"dataset source .* != .*refusing to serve"):
        Ranker(trained.model_dir, open_store(url, store_cfg()), serve_cfg())


def test_serving_accepts_a_newer_snapshot_of_the_same_source(trained, tmp_path: Path) -> None:  # noqa: ANN001
    root = make_snapshot(tmp_path / "k-new", trained.data_dir, dim=DIM, seed=3, dataset_version="newer-rows")
    url = str(tmp_path / "online")
    materialize(OfflineStore(root).current_path(), url, store_cfg())
    ranker = Ranker(trained.model_dir, open_store(url, store_cfg()), serve_cfg())
    ok, details = ranker.readiness()
    assert ok and details["knowledge_agrees"]
    ranker.close()
