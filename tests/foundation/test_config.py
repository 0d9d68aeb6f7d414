"""The typed configuration: defaults, YAML merge, overrides, clear errors."""

from pathlib import Path

import pytest
import yaml

from llm4msr.config import DEFAULT_CONFIG_PATH, ConfigError, Settings, dump_config, load_config


def test_default_yaml_equals_model_defaults():
    on_disk = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    assert on_disk == Settings().model_dump(mode="json"), (
        "configs/default.yaml drifted from llm4msr/config.py; regenerate it with "
        "`llm4msr config show --defaults > configs/default.yaml` and re-add the header"
    )


def test_yaml_merge_and_overrides(tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochs: 3\n  meta:\n    rank: 4\n")
    s = load_config(cfg, ["train.backbone=pepnet", "knowledge.pca_dim=32"])
    assert s.train.epochs == 3
    assert s.train.meta.rank == 4
    assert s.train.meta.user_level is True  # untouched sibling keeps its default
    assert s.train.backbone == "pepnet"
    assert s.knowledge.pca_dim == 32


def test_round_trip_of_resolved_config(tmp_path: Path):
    s = load_config(None, ["train.seed=7"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(s))
    assert load_config(path) == s


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.backbone=transformerx", "train.backbone"),
        ("train.epochs=0", "train.epochs"),
        ("train.epoch=3", "train.epoch"),  # misspelled key is an error, not a silent default
        ("nonsense", "KEY=VALUE"),
    ],
)
def test_bad_overrides_name_the_key(override: str, fragment: str):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_config(None, [override])


def test_missing_and_malformed_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_retired_keys_of_old_run_configs_are_dropped_with_a_warning(tmp_path: Path, caplog, monkeypatch):
    """A run directory written before a setting was removed must still load (export, explain,
    benchmark reuse); an unknown key that was never a setting is still an error."""
    import llm4msr.config

    monkeypatch.setattr(llm4msr.config, "_RETIRED_SEEN", set())  # warned once per process
    old = yaml.safe_load(dump_config(Settings()))
    old["export"]["models_dir"] = "artifacts/models"
    old["pipelines"]["task_timeout_seconds"] = 3600
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(old))
    with caplog.at_level("WARNING", logger="llm4msr.config"):
        assert load_config(path) == Settings()
    assert "ignoring retired export.models_dir" in caplog.text and "task_timeout_seconds" in caplog.text
    old["export"]["no_such_key"] = 1
    path.write_text(yaml.safe_dump(old))
    with pytest.raises(ConfigError, match="export.no_such_key"):
        load_config(path)
