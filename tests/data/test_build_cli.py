"""build_and_write and the `llm4msr data` command."""

from __future__ import annotations

import json

import polars as pl

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
    assert main(["data", "summary", str(out)]) == 0
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
    assert main(["data", "summary", str(tmp_path / "nope")]) == 2
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temp folders left behind


def test_seed_changes_data(small_dataset_config):
    other = DataConfig.model_validate({**small_dataset_config.model_dump(), "seed": 1})
    assert not build_dataset(other).interactions.equals(build_dataset(small_dataset_config).interactions)
