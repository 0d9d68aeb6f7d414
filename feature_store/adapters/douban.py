"""Douban (book / movie / music): one CSV with `domain, user_id, item_id, label` (+ optional `timestamp`).

`data.path` is the CSV file or a folder containing exactly one `*.csv`. Users are shared across
domains; item ids are prefixed with their domain (`book_123`) because the three catalogues number
their items independently. Without a timestamp column the split is seeded-random.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from feature_store.adapters import RawData, require_path
from feature_store.adapters.common import (
    check_known,
    check_labels,
    check_no_nulls,
    read_csv,
    require_columns,
    to_int,
)
from feature_store.dataset import DataError
from llm4msr.config import DataConfig

DOMAINS = {
    "book": ("Books", "Douban Books: ratings and reading lists of books."),
    "movie": ("Movies", "Douban Movies: ratings of films and TV series."),
    "music": ("Music", "Douban Music: ratings of albums and songs."),
}


def matches(path: Path) -> bool:
    """True when `path` is (or is a folder with exactly one) CSV whose header has domain, user_id,
    item_id and label (for `data build --path` without --dataset)."""
    found = [path] if path.is_file() else sorted(path.glob("*.csv"))
    if len(found) != 1 or found[0].suffix.lower() != ".csv":
        return False
    with open(found[0], encoding="utf-8", errors="replace") as fh:
        header = {c.strip().lower() for c in fh.readline().split(",")}
    return {"domain", "user_id", "item_id", "label"} <= header


def load(cfg: DataConfig) -> RawData:
    path = require_path(cfg, "douban")
    if path.is_dir():
        found = sorted(path.glob("*.csv"))
        if len(found) != 1:
            raise DataError(
                f"{path}: expected exactly one *.csv (domain,user_id,item_id,label), found {len(found)}"
            )
        path = found[0]
    df = read_csv(path)
    require_columns(df, path, ["domain", "user_id", "item_id", "label"])
    check_no_nulls(df, path, ["domain", "user_id", "item_id"])
    df = df.with_columns(pl.col("domain").str.strip_chars().str.to_lowercase())
    check_known(df, path, "domain", DOMAINS, "scenario id")
    df = check_labels(df, path, "label")
    has_ts = "timestamp" in df.columns
    if has_ts:
        df = to_int(df, path, "timestamp", allow_float=True)
    inter = df.select(
        pl.col("user_id").str.strip_chars(),
        item_id=pl.col("domain") + pl.lit("_") + pl.col("item_id").str.strip_chars(),
        scenario_id=pl.col("domain"),
        label=pl.col("label"),
        timestamp=pl.col("timestamp") if has_ts else pl.lit(0, pl.Int64),
    )
    names = {k: v[0] for k, v in DOMAINS.items()}
    items = (
        inter.select("item_id", "scenario_id")
        .unique("item_id")
        .sort("item_id")
        .select(
            "item_id",
            title=pl.col("scenario_id").replace_strict(names, return_dtype=pl.String).str.strip_chars_end("s")
            + pl.lit(" ")
            + pl.col("item_id").str.split("_").list.last(),
            categories=pl.concat_list(pl.col("scenario_id").replace_strict(names, return_dtype=pl.String)),
            description=pl.lit(None, pl.String),
        )
        .with_columns(
            description=pl.lit("Douban ")
            + pl.col("categories").list.first().str.to_lowercase()
            + pl.lit(" item (no text in the source).")
        )
    )
    users = inter.select(pl.col("user_id").unique()).sort("user_id")
    present = sorted(inter["scenario_id"].unique())
    scenarios = pl.DataFrame(
        {
            "scenario_id": present,
            "name": [DOMAINS[d][0] for d in present],
            "description": [DOMAINS[d][1] for d in present],
        }
    )
    return RawData(
        interactions=inter,
        users=users,
        items=items,
        scenarios=scenarios,
        has_timestamps=has_ts,
        params={"dataset": "douban", "file": str(path)},
    )
