"""build_and_write and the `llm4msr data` command."""

from __future__ import annotations

import json

import polars as pl
import pytest

from feature_store.build import build_and_write, build_dataset
from feature_store.dataset import load_dataset
from llm4msr.config import DataConfig
from pipelines.cli import main

SMALL = [
    "--set",
    "data.synthetic.n_users=100",
    "--set",
    "data.synthetic.n_items=60",
    "--set",
    "data.synthetic.n_interactions=2000",
]


def test_build_and_write_round_trip(tmp_path, small_dataset_config):
    out = build_and_write(small_dataset_config, tmp_path / "ds")
    ds = load_dataset(out, verify_checksums=True)
    mem = build_dataset(small_dataset_config)
    assert ds.interactions.equals(mem.interactions)
    assert ds.users.columns[:2] == ["user_id", "train_cutoff"]
    assert ds.manifest["source"]["dataset"] == "synthetic" and ds.manifest["source"]["seed"] == 0
    assert ds.manifest["counts"]["interactions"] == 8000
    # Rebuilding gives byte-identical tables (deterministic).
    again = build_and_write(small_dataset_config, tmp_path / "ds2")
    for name in ("interactions", "users", "items", "scenarios", "vocabs"):
        f = [k for k in ds.manifest["files"] if k.startswith(name)][0]
        assert (
            json.loads((again / "manifest.json").read_text())["files"][f]["sha256"]
            == ds.manifest["files"][f]["sha256"]
        )


def test_cli_build_and_summary(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["data", "build", "--out", str(out), *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "rows=2,000" in printed and "grocery" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == 2000 and {r["scenario_id"] for r in summary["per_scenario"]} == {
        "grocery",
        "kitchen",
        "outdoors",
    }
    assert main(["data", "summary", "--data", str(out)]) == 0
    assert "rows=2,000" in capsys.readouterr().out
    assert pl.read_parquet(out / "interactions.parquet").height == 2000


def test_cli_errors_exit_nonzero_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    assert (
        main(
            [
                "data",
                "build",
                "--dataset",
                "movielens",
                "--path",
                str(tmp_path / "missing"),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "missing" in err and "does not exist" in err
    assert main(["data", "build", "--out", str(out), "--set", "data.synthetic.n_userz=3"]) == 2
    assert "n_userz" in capsys.readouterr().err
    assert main(["data", "summary", "--data", str(tmp_path / "nope")]) == 2
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temp folders left behind


def test_seed_changes_data(small_dataset_config):
    other = DataConfig.model_validate({**small_dataset_config.model_dump(), "seed": 1})
    assert not build_dataset(other).interactions.equals(build_dataset(small_dataset_config).interactions)


def test_cli_path_without_dataset_detects_the_source(tmp_path, capsys):
    """`--path` without `--dataset` used to build the synthetic default and exit 0."""
    from tests.data.test_movielens import write_grouplens

    src = write_grouplens(tmp_path / "ml")
    out = tmp_path / "ml-built"
    assert main(["data", "build", "--path", str(src), "--out", str(out)]) == 0
    assert "dataset 'movielens' detected" in capsys.readouterr().out
    ds = load_dataset(out)
    assert ds.manifest["source"]["dataset"] == "movielens" and ds.manifest["source"]["layout"] == "grouplens"
    assert ds.manifest["source"]["config"]["path"] == str(src)


def test_cli_path_with_no_known_layout_or_synthetic_is_refused(tmp_path, capsys):
    src = tmp_path / "unknown"
    src.mkdir()
    (src / "notes.txt").write_text("not a dataset\n")
    out = tmp_path / "never"
    assert main(["data", "build", "--path", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(src) in err and "--dataset" in err and "synthetic" in err
    # Naming synthetic explicitly with a path is refused too: synthetic reads no files.
    assert main(["data", "build", "--dataset", "synthetic", "--path", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(src) in err and "--dataset" in err and "movielens" in err
    assert not out.exists()


def test_detect_datasets_on_the_layouts(tmp_path):
    from feature_store.adapters import detect_datasets
    from tests.data.test_movielens import write_ml1m

    assert detect_datasets(write_ml1m(tmp_path / "ml1m")) == ["movielens"]
    (tmp_path / "amz").mkdir()
    (tmp_path / "amz" / "num.txt").write_text("2\n3\n")
    assert detect_datasets(tmp_path / "amz") == ["amazon"]
    (tmp_path / "dou").mkdir()
    (tmp_path / "dou" / "d.csv").write_text("domain,user_id,item_id,label\nbook,1,2,1\n")
    assert detect_datasets(tmp_path / "dou") == ["douban"]
    (tmp_path / "kuai").mkdir()
    for name in ("rec_inter", "src_inter", "user_features", "item_features"):
        (tmp_path / "kuai" / f"{name}.csv").write_text("user_id\n1\n")
    assert detect_datasets(tmp_path / "kuai") == ["kuaisar"]


def test_detect_datasets_on_the_shared_real_data():
    from feature_store.adapters import detect_datasets
    from llm4msr.config import REPO_ROOT

    shared = REPO_ROOT.parent / "shared" / "data"
    if not (shared / "ml-100k").is_dir() or not (shared / "amazon-food-kitchen").is_dir():
        pytest.skip("the shared real data is not beside the repo")
    assert detect_datasets(shared / "ml-100k") == ["movielens"]
    assert detect_datasets(shared / "amazon-food-kitchen") == ["amazon"]
