"""Vocabularies: value -> index maps for the ranker's sparse features, fit on the training split.

Index 0 is reserved for unknown values (ids first seen in valid/test, new users online), so a
model never sees evaluation-only ids during training. Indices are assigned by descending
training frequency, ties broken by the value, which makes them deterministic and lets a consumer
cap a vocabulary by keeping its first N entries. Feature names are column names: `user_id`,
`item_id`, `scenario_id`, then every string attribute column of users and items (for example
`age_group`, `gender`, `item_category`).
"""

from __future__ import annotations

import polars as pl

from feature_store import schema

UNKNOWN_INDEX = 0
# Text columns that are prompt material, not categorical features.
NON_FEATURE_COLUMNS = {"title", "description", "categories", "train_cutoff"}


def _index_counts(counts: pl.DataFrame, col: str) -> dict[str, int]:
    """counts: (col, n) -> {value: index}, by descending n then value, starting at 1."""
    counts = counts.filter(pl.col(col).is_not_null()).sort(["n", col], descending=[True, False])
    return {str(v): i + 1 for i, v in enumerate(counts[col].to_list())}


def _index(values: pl.Series) -> dict[str, int]:
    return _index_counts(values.drop_nulls().value_counts(name="n"), values.name)


def attribute_columns(df: pl.DataFrame, key: str) -> list[str]:
    """String attribute columns of a users/items table (the categorical features besides the key)."""
    return [c for c, t in df.schema.items() if c != key and c not in NON_FEATURE_COLUMNS and t == pl.String]


def fit_vocabs(
    interactions: pl.DataFrame, users: pl.DataFrame, items: pl.DataFrame
) -> dict[str, dict[str, int]]:
    """Fit every vocabulary on rows with split == "train" (and the users/items those rows touch)."""
    train = interactions.filter(pl.col("split") == "train")
    vocabs: dict[str, dict[str, int]] = {}
    counts = {col: train.group_by(col).agg(n=pl.len()) for col in schema.KEY_COLUMNS["interactions"]}
    for col, c in counts.items():
        vocabs[col] = _index_counts(c, col)
    # An attribute's frequency counts training interactions (as the model sees it), not table rows;
    # aggregate per id first so the big table is never joined with the attributes.
    for table, df, key in (("users", users, "user_id"), ("items", items, "item_id")):
        rows = df.join(counts[key], on=key, how="inner")
        for col in attribute_columns(df, key):
            if col in vocabs:
                raise ValueError(
                    f"{table} attribute column {col!r} clashes with another feature of that name"
                )
            vocabs[col] = _index_counts(rows.group_by(col).agg(n=pl.col("n").sum()), col)
    return vocabs


def feature_tables(
    vocabs: dict[str, dict[str, int]], users: pl.DataFrame, items: pl.DataFrame
) -> dict[str, str]:
    """Which table carries each vocabulary feature: "context" (scenario), "user" or "item"."""
    out = {}
    for name in vocabs:
        if name == "scenario_id":
            out[name] = "context"
        elif name in users.columns:
            out[name] = "user"
        elif name in items.columns:
            out[name] = "item"
    return out


def lookup(vocab: dict[str, int], values: pl.Series) -> pl.Series:
    """Map values to indices; unknown or null values -> 0."""
    return values.replace_strict(vocab, default=UNKNOWN_INDEX, return_dtype=pl.Int64)
