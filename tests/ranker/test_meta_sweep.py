"""bench.meta_sweep: +LLM4MSR variants trained beside a benchmark's plain runs, compared on
validation and test with the report's rules, and reused when their settings match."""

import json
import shutil

from bench.meta_sweep import main as sweep
from llm4msr.config import load_config
from ranker.train import train
from tests.ranker.conftest import fast_settings


def test_sweep_trains_the_variant_beside_the_plain_runs_and_reuses_it(
    tmp_path, tiny_data, tiny_knowledge, capsys
):
    root = tmp_path / "ml"
    shutil.copytree(tiny_data, root / "data")
    shutil.copytree(tiny_knowledge, root / "knowledge")
    for seed in (0, 1):
        settings = fast_settings(
            "train.backbone=shared_bottom", "train.use_llm=false", f"train.seed={seed}", "train.meta.rank=2"
        )
        train(settings, root / "data", None, root / "runs" / f"shared_bottom-plain-seed{seed}")
    args = ["--root", str(root), "--name", "lrs", "--set", "train.meta.lr_scale=0.5"]
    assert sweep([*args, "--backbones", "shared_bottom", "--seeds", "0,1"]) == 0
    out = capsys.readouterr().out
    assert "shared_bottom" in out and "valid Δ" in out and "never worse" in out
    run = root / "sweeps" / "lrs" / "shared_bottom-llm-seed1"
    cfg = load_config(run / "config.yaml").train
    assert cfg.use_llm and cfg.seed == 1 and cfg.meta.lr_scale == 0.5
    assert cfg.hidden_dims == [32, 16]  # the plain run's settings, knowledge on
    assert cfg.meta.rank == 8  # but the default meta networks, not the plain run's meta settings
    stamp = (run / "metrics.json").stat().st_mtime_ns
    assert sweep([*args, "--backbones", "shared_bottom", "--seeds", "0,1"]) == 0
    assert (run / "metrics.json").stat().st_mtime_ns == stamp  # reused, not trained again
    records = [json.loads(line) for line in (root / "sweeps" / "results.jsonl").read_text().splitlines()]
    assert len(records) == 2 and records[0]["rows"][0]["backbone"] == "shared_bottom"
