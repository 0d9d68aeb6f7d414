"""bench.noise_floor: plain retrained with other seeds, judged against plain with the report's rules."""

import json
import shutil

from bench.noise_floor import main as noise_floor
from llm4msr.config import load_config
from ranker.train import train
from tests.ranker.conftest import fast_settings


def test_noise_floor_trains_other_seeds_with_the_plain_settings_and_judges_them(tmp_path, tiny_data, capsys):
    root = tmp_path / "ml"
    shutil.copytree(tiny_data, root / "data")
    for seed in (0, 1):
        settings = fast_settings("train.backbone=shared_bottom", "train.use_llm=false", f"train.seed={seed}")
        train(settings, root / "data", None, root / "runs" / f"shared_bottom-plain-seed{seed}")
    args = ["--root", str(root), "--backbones", "shared_bottom", "--plain-seeds", "0,1", "--seeds", "5,6"]
    assert noise_floor(args) == 0
    out = capsys.readouterr().out
    assert "plain seeds 5,6 against plain seeds 0,1" in out and "never worse" in out
    run = root / "noise" / "shared_bottom-plain-seed6"
    cfg = load_config(run / "config.yaml").train
    assert not cfg.use_llm and cfg.seed == 6 and cfg.hidden_dims == [32, 16]  # the plain run's settings
    stamp = (run / "metrics.json").stat().st_mtime_ns
    assert noise_floor(args) == 0
    assert (run / "metrics.json").stat().st_mtime_ns == stamp  # reused, not trained again
    records = [json.loads(x) for x in (root / "noise" / "results.jsonl").read_text().splitlines()]
    assert (
        len(records) == 2
        and records[0]["seeds"] == [5, 6]
        and records[0]["rows"][0]["backbone"] == "shared_bottom"
    )


def test_noise_floor_refuses_overlapping_seeds(tmp_path, capsys):
    assert noise_floor(["--root", str(tmp_path), "--seeds", "1,3"]) == 2
    assert "--seeds must differ" in capsys.readouterr().err
