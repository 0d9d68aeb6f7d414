"""The ranker benchmark builds the data its --set data.* overrides describe, and reports the split
the built dataset really has (read from its manifest). No training here."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.ranker import DATASETS, data_config, data_tag, dataset_root, main, prepare_data, split_used
from llm4msr.config import ConfigError, DataConfig

SMALL = {"seed": 0, "synthetic": {"n_users": 30, "n_items": 30, "n_interactions": 1000}}


def test_data_overrides_reach_the_benchmark_data_config():
    cfg = data_config("ml-100k", ["data.split.strategy=random", "data.seed=7", "train.lr=0.1"])
    assert cfg.dataset == "movielens" and cfg.path == DATASETS["ml-100k"]["path"]
    assert cfg.split.strategy == "random" and cfg.seed == 7
    assert data_config("ml-100k", ["data.movielens.scenario_by=genre"]).movielens.scenario_by == "genre"
    assert data_config("ml-100k", []).split.strategy == "leave_last_n"
    # Other data settings live in their own folder (data, knowledge, runs) and report.
    assert data_tag(["train.lr=0.1"]) == "" and dataset_root("ml-100k", Path("w"), []) == Path("w/ml-100k")
    tag = data_tag(["data.split.strategy=random"])
    assert tag.startswith("+data-") and tag == data_tag(["train.lr=0.1", "data.split.strategy=random"])


@pytest.mark.parametrize("key", ["data.dataset=amazon", "data.path=/elsewhere", "data.out=/x"])
def test_fixed_data_keys_are_refused(key, capsys):
    with pytest.raises(ConfigError, match=key.split("=")[0]):
        data_config("ml-100k", [key])
    assert main(["--quick", "--set", key]) == 2  # before building or training anything
    assert key.split("=")[0] in capsys.readouterr().err


def test_misspelled_data_override_is_an_error():
    with pytest.raises(ConfigError, match="strategi"):
        data_config("ml-100k", ["data.split.strategi=random"])


def test_built_data_reports_its_own_split_and_is_never_reused_for_other_settings(tmp_path):
    rnd = DataConfig.model_validate({**SMALL, "split": {"strategy": "random", "test_ratio": 0.2}})
    data_dir = prepare_data(rnd, tmp_path / "data")
    assert split_used(data_dir) == "split random (valid_ratio=0.1, test_ratio=0.2), seed 0"
    mtime = (data_dir / "manifest.json").stat().st_mtime_ns
    assert prepare_data(rnd, data_dir) == data_dir  # same settings: reused
    assert (data_dir / "manifest.json").stat().st_mtime_ns == mtime
    with pytest.raises(ConfigError, match=r"other data settings \(\['split'\]"):
        prepare_data(DataConfig.model_validate(SMALL), data_dir)
    temporal = prepare_data(DataConfig.model_validate(SMALL), tmp_path / "temporal")
    assert split_used(temporal) == "split leave_last_n (n_valid=1, n_test=1, per_scenario=False), seed 0"
