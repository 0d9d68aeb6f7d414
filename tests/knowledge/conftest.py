"""Hand-built canonical datasets for knowledge tests (exact schema of feature_store.schema)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from bench.simulate import churn  # noqa: F401 - re-exported for the tests
from feature_store.dataset import CanonicalDataset, write_dataset
from feature_store.schema import INTERACTIONS_SCHEMA

SCENARIOS = [
    ("s1", "Movies", "Feature films."),
    ("s2", "Books", "Printed and e-books."),
    ("s3", "Music", "Albums."),
]


def tiny_dataset(
    n_users: int = 6, per_scenario: int = 5, scenario_description: str | None = None
) -> CanonicalDataset:
    """Users u0..u{n-1}; each has `per_scenario` train rows per scenario (timestamps 1..) and one valid
    and one test row with LEAK titles after their cutoff. The last user has only valid/test rows."""
    items, inter, users = [], [], []
    for sid, _, _ in SCENARIOS:
        for k in range(per_scenario * 2):
            items.append(
                {
                    "item_id": f"{sid}-i{k}",
                    "title": f"{sid} title {k}",
                    "categories": [f"{sid}-cat{k % 3}"],
                    "description": None,
                }
            )
        items.append(
            {
                "item_id": f"{sid}-leak",
                "title": f"LEAK {sid} future",
                "categories": ["LEAKCAT"],
                "description": None,
            }
        )
    for u in range(n_users):
        uid = f"u{u}"
        ts = 0
        has_train = u < n_users - 1
        if has_train:
            for sid, _, _ in SCENARIOS:
                for k in range(per_scenario):
                    ts += 1
                    inter.append(
                        (uid, f"{sid}-i{(k + u) % (per_scenario * 2)}", sid, (k + u) % 2, ts, "train")
                    )
        cutoff = ts if has_train else None
        inter.append((uid, "s1-leak", "s1", 1, ts + 1, "valid"))
        inter.append((uid, "s2-leak", "s2", 1, ts + 2, "test"))
        users.append({"user_id": uid, "train_cutoff": cutoff, "age_group": "25-34" if u % 2 else "18-24"})
    interactions = pl.DataFrame(
        inter,
        schema=INTERACTIONS_SCHEMA,
        orient="row",
    )
    scen = [(s, n, scenario_description or d) for s, n, d in SCENARIOS]
    return CanonicalDataset(
        interactions=interactions,
        users=pl.DataFrame(
            users, schema={"user_id": pl.String, "train_cutoff": pl.Int64, "age_group": pl.String}
        ),
        items=pl.DataFrame(
            items,
            schema={
                "item_id": pl.String,
                "title": pl.String,
                "categories": pl.List(pl.String),
                "description": pl.String,
            },
        ),
        scenarios=pl.DataFrame(
            scen, schema={"scenario_id": pl.String, "name": pl.String, "description": pl.String}, orient="row"
        ),
    )


def write_tiny(path: Path, **kwargs) -> Path:
    return write_dataset(tiny_dataset(**kwargs), path, source={"dataset": "tiny-test"})


@pytest.fixture
def tiny_dataset_dir(tmp_path: Path) -> Path:
    return write_tiny(tmp_path / "tiny")
