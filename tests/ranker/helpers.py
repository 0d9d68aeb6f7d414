"""Tiny hand-built datasets and knowledge snapshots for ranker tests (no dependency on the builders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from feature_store.dataset import CanonicalDataset, load_dataset, write_dataset
from feature_store.knowledge_snapshot import KnowledgeRows, knowledge_family, write_snapshot_files
from feature_store.offline_store import OfflineStore
from feature_store.schema import INTERACTIONS_SCHEMA


def make_dataset(
    out: Path,
    *,
    n_users: int = 60,
    n_items: int = 40,
    n_scenarios: int = 3,
    per_user: int = 24,
    n_categories: int = 4,
    seed: int = 0,
) -> tuple[Path, np.ndarray]:
    """Users with a hidden taste over categories shared by all scenarios; returns (dir, tastes)."""
    rng = np.random.default_rng(seed)
    tastes = rng.normal(size=(n_users, n_categories)) * 2.0
    item_cat = rng.integers(0, n_categories, n_items)
    scen_bias = np.linspace(-0.5, 0.5, n_scenarios)
    rows = []
    for u in range(n_users):
        for t in range(per_user):
            s = int(rng.integers(0, n_scenarios))
            i = int(rng.integers(0, n_items))
            p = 1 / (1 + np.exp(-(tastes[u, item_cat[i]] + scen_bias[s])))
            split = "train" if t < per_user - 4 else ("valid" if t < per_user - 2 else "test")
            rows.append((f"u{u}", f"i{i}", f"s{s}", int(rng.random() < p), t, split))
    inter = pl.DataFrame(
        rows,
        schema=INTERACTIONS_SCHEMA,
        orient="row",
    )
    users = pl.DataFrame(
        {
            "user_id": [f"u{u}" for u in range(n_users)],
            "train_cutoff": pl.Series([per_user - 5] * n_users, dtype=pl.Int64),
            "gender": [("F", "M")[u % 2] for u in range(n_users)],
        }
    )
    items = pl.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(n_items)],
            "title": [f"item {i}" for i in range(n_items)],
            "categories": [[f"c{item_cat[i]}"] for i in range(n_items)],
            "description": [None] * n_items,
        },
        schema={
            "item_id": pl.String,
            "title": pl.String,
            "categories": pl.List(pl.String),
            "description": pl.String,
        },
    )
    scenarios = pl.DataFrame(
        {
            "scenario_id": [f"s{s}" for s in range(n_scenarios)],
            "name": [f"scenario {s}" for s in range(n_scenarios)],
            "description": ["test scenario"] * n_scenarios,
        }
    )
    ds = CanonicalDataset(interactions=inter, users=users, items=items, scenarios=scenarios)
    write_dataset(ds, out, source={"dataset": "ranker-test", "seed": seed})
    return out, tastes


def make_snapshot(
    root: Path,
    data_dir: Path,
    *,
    dim: int = 16,
    seed: int = 0,
    drop_users: int = 5,
    drop_scenarios: int = 0,
    tastes: np.ndarray | None = None,
    dataset_version: str | None = "from-data",
    max_history: int | None = 10,
) -> Path:
    """A current snapshot of random (or taste-bearing) vectors in an OfflineStore at `root`; returns root.

    The first `drop_users` users get no vector (exercises the fallback). The manifest records
    `data_dir`'s dataset id as a real build would (`dataset_version=None`: an old snapshot without one).
    """
    rng = np.random.default_rng(seed)
    users = pl.read_parquet(data_dir / "users.parquet")["user_id"].to_list()[drop_users:]
    scen = pl.read_parquet(data_dir / "scenarios.parquet")["scenario_id"].to_list()
    scen = scen[: len(scen) - drop_scenarios]
    uvec = rng.normal(size=(len(users), dim)).astype(np.float32)
    if tastes is not None:
        proj = rng.normal(size=(tastes.shape[1], dim))
        uvec = (tastes[drop_users:] @ proj).astype(np.float32)
    vectors = np.concatenate([rng.normal(size=(len(scen), dim)).astype(np.float32), uvec])
    kinds = ["scenario"] * len(scen) + ["user"] * len(users)
    n = len(kinds)
    rows = KnowledgeRows(
        kind=kinds,
        entity_id=scen + users,
        vectors=vectors,
        prompt_hash=["h"] * n,
        model_id=["random"] * n,
        template_version=["v1"] * n,
        generated_at=[0] * n,
        answer=[None] * n,
    )
    store = OfflineStore(root)
    with store.new_version() as (sid, tmp):
        write_snapshot_files(
            tmp,
            rows,
            {
                "snapshot_id": sid,
                "model_id": "random",
                "pooling": "MEAN",
                "knowledge_family": knowledge_family("random", "MEAN", dim),
                **_dataset_ids(data_dir, dataset_version),
                "max_history_per_scenario": max_history,
            },
            "float32",
        )
    store.set_current(sid)
    return root


def _dataset_ids(data_dir: Path, version: str | None) -> dict[str, str]:
    if version is None:
        return {}
    ds = load_dataset(data_dir)
    return {
        "dataset_version": ds.version() if version == "from-data" else version,
        "dataset_source": ds.source_id(),
    }


# Training overrides that keep a test run to seconds (tiny model, one epoch, one thread).
FAST_TRAIN = [
    "train.threads=1",
    "train.epochs=1",
    "train.batch_size=256",
    "train.hidden_dims=[32,16]",
    "train.embedding_dim=8",
    "train.meta.knowledge_proj_dim=16",
    "train.meta.rank=4",
    "eval.n_negatives=20",
]
