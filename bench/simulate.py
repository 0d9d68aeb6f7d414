"""Simulated behaviour change (a churned copy of a dataset) for the knowledge benchmark and the incremental-refresh tests; benchmark tooling, not product code."""

from __future__ import annotations

import random
from pathlib import Path

import polars as pl

from feature_store.dataset import CanonicalDataset, load_dataset, write_dataset


def churn(src: str | Path, out: str | Path, fraction: float = 0.01, seed: int = 0) -> tuple[Path, list[str]]:
    """Copy a dataset, flipping the label of the newest training row of `fraction` of the users."""
    ds = load_dataset(src)
    with_hist = sorted(ds.interactions.filter(pl.col("split") == "train")["user_id"].unique().to_list())
    n = max(1, round(len(with_hist) * fraction))
    changed = sorted(random.Random(seed).sample(with_hist, n))
    inter = ds.interactions.with_row_index("_r")
    newest = (
        inter.filter((pl.col("split") == "train") & pl.col("user_id").is_in(changed))
        .sort(["user_id", "timestamp", "item_id"])
        .group_by("user_id", maintain_order=True)
        .last()["_r"]
    )
    inter = inter.with_columns(
        label=pl.when(pl.col("_r").is_in(newest.implode()))
        .then(1 - pl.col("label"))
        .otherwise(pl.col("label"))
        .cast(pl.Int8)
    ).drop("_r")
    out_ds = CanonicalDataset(
        interactions=inter, users=ds.users, items=ds.items, scenarios=ds.scenarios, vocabs=ds.vocabs
    )
    return write_dataset(out_ds, out, source={"dataset": "churned"}), changed
