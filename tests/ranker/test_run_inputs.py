"""A run trains on the inputs it names and records them as they were.

A knowledge snapshot is used only with the dataset (content + split) it was built from, and the
run's config.yaml shows the data it trained on. Real pieces end to end: two synthetic builds of
the same source that differ only in the split (leave_last_n vs random), a snapshot encoded by the
tiny decoder (transformers backend) on one, training on each.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from feature_store.build import build_and_write
from feature_store.dataset import load_dataset
from feature_store.knowledge_snapshot import ForeignKnowledgeError
from knowledge_service.backends import release_backends
from knowledge_service.runner import build_knowledge
from llm4msr.config import DataConfig, KnowledgeConfig, load_config
from pipelines.cli import main as cli
from ranker.train import train
from tests.ranker.conftest import fast_settings
from tests.ranker.helpers import FAST_TRAIN, make_dataset, make_snapshot

SOURCE = {"seed": 0, "synthetic": {"n_users": 30, "n_items": 30, "n_interactions": 1000, "n_categories": 4}}


@pytest.fixture(scope="module")
def two_splits(tmp_path_factory: pytest.TempPathFactory, tiny_decoder_dir: Path) -> dict[str, Path]:
    """Datasets `temporal` (leave_last_n) and `random` of one source; knowledge built on `random`."""
    base = tmp_path_factory.mktemp("two-splits")
    temporal = build_and_write(DataConfig.model_validate(SOURCE), base / "temporal")
    rnd = build_and_write(
        DataConfig.model_validate({**SOURCE, "split": {"strategy": "random"}}), base / "random"
    )
    kcfg = KnowledgeConfig(
        backend="transformers",
        model=str(tiny_decoder_dir),
        num_shards=1,
        max_prompt_tokens=384,
        max_history_per_scenario=3,
    )
    build_knowledge(rnd, base / "knowledge", kcfg)
    release_backends()
    return {"temporal": temporal, "random": rnd, "knowledge": base / "knowledge", "base": base}


def test_snapshot_of_another_split_is_refused_naming_both_ids(two_splits):
    temporal, rnd = load_dataset(two_splits["temporal"]), load_dataset(two_splits["random"])
    assert temporal.version() != rnd.version()  # the id covers the split
    out = two_splits["base"] / "run-foreign"
    with pytest.raises(ForeignKnowledgeError) as exc:
        train(fast_settings(), two_splits["temporal"], two_splits["knowledge"], out)
    msg = str(exc.value)
    assert rnd.version() in msg and temporal.version() in msg
    assert "train.allow_foreign_knowledge" in msg and "llm4msr knowledge build" in msg
    assert not out.exists()
    # The CLI prints the same refusal as one error line and exits 2.
    args = ["train", "--data", str(two_splits["temporal"]), "--knowledge", str(two_splits["knowledge"])]
    sets = [x for s in FAST_TRAIN for x in ("--set", s)]
    assert cli([*args, "--out", str(out), *sets]) == 2
    assert not out.exists()


def test_same_dataset_trains_and_records_the_ids(two_splits):
    out = two_splits["base"] / "run-same"
    train(fast_settings(), two_splits["random"], two_splits["knowledge"], out)
    know = json.loads((out / "run.json").read_text())["knowledge"]
    version = load_dataset(two_splits["random"]).version()
    assert know["dataset_version"] == know["data_version"] == version
    assert know["foreign"] is False and know["allow_foreign_knowledge"] is False
    assert json.loads((out / "metrics.json").read_text())["foreign_knowledge"] is False


def test_override_trains_and_records_foreign(two_splits):
    out = two_splits["base"] / "run-override"
    train(
        fast_settings("train.allow_foreign_knowledge=true"),
        two_splits["temporal"],
        two_splits["knowledge"],
        out,
    )
    know = json.loads((out / "run.json").read_text())["knowledge"]
    assert know["foreign"] is True and know["allow_foreign_knowledge"] is True
    assert know["dataset_version"] == load_dataset(two_splits["random"]).version()
    assert know["data_version"] == load_dataset(two_splits["temporal"]).version()
    assert json.loads((out / "metrics.json").read_text())["foreign_knowledge"] is True


def test_snapshot_without_dataset_id_is_refused_with_a_rebuild_hint(tmp_path):
    data, _ = make_dataset(tmp_path / "data", n_users=20)
    root = make_snapshot(tmp_path / "k", data, dataset_version=None)
    with pytest.raises(ForeignKnowledgeError, match="no dataset_version.*rebuild it"):
        train(fast_settings(), data, root, tmp_path / "run")


def test_run_config_shows_the_data_it_trained_on(two_splits):
    """The run's settings have the default data section (synthetic, leave_last_n, 2000 users); its
    config.yaml must show the dataset's own build config instead."""
    out = two_splits["base"] / "run-same"
    if not out.exists():
        train(fast_settings(), two_splits["random"], two_splits["knowledge"], out)
    data = load_config(out / "config.yaml").data
    assert data.split.strategy == "random" and data.synthetic.n_users == 30 and data.seed == 0
    assert data.out == str(two_splits["random"])
    built = load_dataset(two_splits["random"]).build_config()
    assert data.model_dump(mode="json", exclude={"out"}) == built


def test_run_config_without_a_recorded_build_config_leaves_data_out(tiny_data, tiny_knowledge, tmp_path):
    """Hand-built tables record no build config: config.yaml says so instead of showing defaults."""
    out = tmp_path / "run"
    train(fast_settings(), tiny_data, tiny_knowledge, out)
    text = (out / "config.yaml").read_text()
    assert "data" not in yaml.safe_load(text) and "# data: not recorded" in text
    assert load_config(out / "config.yaml").train == fast_settings().train
