"""The headline claim on synthetic data with planted cross-scenario tastes: +LLM4MSR (real MiniLM
knowledge from the knowledge service) beats its backbone in every scenario, by more than the
seed-to-seed spread. Slow: builds a real knowledge snapshot and trains 2 × N_SEEDS models."""

from __future__ import annotations

import numpy as np
import pytest

from llm4msr.config import DataConfig, KnowledgeConfig, load_config

N_SEEDS = 3
DATA = {
    "dataset": "synthetic",
    "seed": 0,
    "synthetic": {"n_users": 600, "n_items": 300, "n_interactions": 20_000},
}
TRAIN = [
    "train.threads=1",
    "train.backbone=shared_bottom",
    "train.epochs=12",
    "train.patience=3",
    "train.batch_size=256",
    "train.lr=0.003",
    "train.meta.knowledge_proj_dim=16",
    "train.meta.rank=4",
    "eval.n_negatives=50",
]


@pytest.mark.slow
def test_llm4msr_beats_backbone_in_every_scenario(tmp_path_factory):
    from feature_store.build import build_and_write
    from knowledge_service.runner import build_knowledge
    from ranker.train import train

    work = tmp_path_factory.mktemp("headline")
    data_dir = build_and_write(DataConfig.model_validate(DATA), work / "data")
    kcfg = KnowledgeConfig(backend="vllm", num_shards=1, snapshot_root=str(work / "knowledge"))
    report = build_knowledge(data_dir, work / "knowledge", kcfg)
    assert report.dimension == 384  # real all-MiniLM-L6-v2 vectors

    per_variant: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for use_llm in (False, True):
        for seed in range(N_SEEDS):
            s = load_config(overrides=[*TRAIN, f"train.use_llm={use_llm}", f"train.seed={seed}"])
            r = train(s, data_dir, work / "knowledge" if use_llm else None, work / f"run-{use_llm}-{seed}")
            per_variant[use_llm].append({k: v["auc"] for k, v in r.metrics["final"]["per_scenario"].items()})
    scenarios = sorted(per_variant[False][0])
    for scen in scenarios:
        plain = np.array([r[scen] for r in per_variant[False]])
        llm = np.array([r[scen] for r in per_variant[True]])
        spread = max(plain.std(ddof=1), llm.std(ddof=1))
        diff = llm.mean() - plain.mean()
        assert diff > 2 * spread and diff > 0.005, (
            f"scenario {scen}: +LLM4MSR AUC {llm.mean():.4f}±{llm.std(ddof=1):.4f} vs plain "
            f"{plain.mean():.4f}±{plain.std(ddof=1):.4f} (difference {diff:+.4f}, seed spread {spread:.4f})"
        )
