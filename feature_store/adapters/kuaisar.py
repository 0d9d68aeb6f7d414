"""KuaiSAR (Kuaishou unified search and recommendation logs): scenarios "search" and "recommendation".

Official files (https://kuaisar.github.io): `rec_inter.csv` (user_id, item_id, timestamp in ms,
click, ...), `src_inter.csv` (user_id, search_session_id, search_session_timestamp in ms,
item_id, click_cnt, item_type, ...), `user_features.csv` (user_id, search_active_level,
rec_active_level, onehot_feat*), `item_features.csv` (item_id, caption (anonymised), author_id,
item_type, upload_type, first..fourth_level_category_name_en, ...). Captions are anonymised token
ids, so an item's readable text is its English category path. Search results can be items that
recommendation never shows (live streams, user profiles); they get a minimal item row.
Label: click (recommendation) or click_cnt > 0 (search). Timestamps become unix seconds.
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from feature_store.adapters import RawData, require_path
from feature_store.adapters.common import (
    check_labels,
    check_no_nulls,
    check_unique,
    read_csv,
    require_columns,
    to_int,
)
from feature_store.dataset import DataError
from llm4msr.config import DataConfig

log = logging.getLogger(__name__)

CATEGORY_LEVELS = [f"{lvl}_level_category_name_en" for lvl in ("first", "second", "third", "fourth")]
SCENARIOS = [
    (
        "recommendation",
        "Recommendation feed",
        "Kuaishou's recommendation feed: short videos the system suggests as the user scrolls.",
    ),
    ("search", "Search", "Kuaishou's search: videos and other results shown after the user types a query."),
]


def matches(path: Path) -> bool:
    """True when `path` holds KuaiSAR's rec_inter.csv and src_inter.csv (for `data build --path`
    without --dataset)."""
    folder = path if path.is_dir() else path.parent
    return (folder / "rec_inter.csv").is_file() and (folder / "src_inter.csv").is_file()


def load(cfg: DataConfig) -> RawData:
    """Read the official KuaiSAR CSVs from a folder."""
    path = require_path(cfg, "kuaisar")
    folder = path if path.is_dir() else path.parent
    files = {
        name: folder / f"{name}.csv" for name in ("rec_inter", "src_inter", "user_features", "item_features")
    }

    rec = read_csv(files["rec_inter"])
    require_columns(rec, files["rec_inter"], ["user_id", "item_id", "timestamp", "click"])
    rec = to_int(rec, files["rec_inter"], "timestamp", allow_float=True)
    rec = check_labels(rec, files["rec_inter"], "click")
    rec = rec.select(
        "user_id",
        "item_id",
        scenario_id=pl.lit("recommendation"),
        label=pl.col("click"),
        timestamp=pl.col("timestamp") // 1000,
    )

    src = read_csv(files["src_inter"])
    require_columns(src, files["src_inter"], ["user_id", "item_id", "search_session_timestamp", "click_cnt"])
    src = to_int(src, files["src_inter"], "search_session_timestamp", allow_float=True)
    src = to_int(src, files["src_inter"], "click_cnt", allow_float=True)
    bad = src.filter(pl.col("click_cnt") < 0)
    if bad.height:
        raise DataError(
            f"{files['src_inter']}: column 'click_cnt' has value {bad['click_cnt'][0]!r}, expected >= 0"
        )
    src_types = src.select(
        "item_id", pl.col("item_type") if "item_type" in src.columns else pl.lit(None, pl.String)
    )
    src = src.select(
        "user_id",
        "item_id",
        scenario_id=pl.lit("search"),
        label=(pl.col("click_cnt") > 0).cast(pl.Int8),
        timestamp=pl.col("search_session_timestamp") // 1000,
    )
    inter = pl.concat([rec, src])
    for name, df in (("rec_inter", rec), ("src_inter", src)):
        check_no_nulls(df, files[name], ["user_id", "item_id"])

    users = read_csv(files["user_features"])
    require_columns(users, files["user_features"], ["user_id"])
    check_no_nulls(users, files["user_features"], ["user_id"])
    check_unique(users, files["user_features"], "user_id")
    missing_users = inter.select("user_id").unique().join(users, on="user_id", how="anti")
    if missing_users.height:
        raise DataError(
            f"{files['rec_inter'].parent}: user_id {missing_users['user_id'][0]!r} appears in the "
            f"interactions but not in {files['user_features']}"
        )

    raw_items = read_csv(files["item_features"])
    require_columns(raw_items, files["item_features"], ["item_id", CATEGORY_LEVELS[0]])
    check_no_nulls(raw_items, files["item_features"], ["item_id"])
    check_unique(raw_items, files["item_features"], "item_id")
    levels = [c for c in CATEGORY_LEVELS if c in raw_items.columns]
    cats = pl.concat_list([pl.col(c) for c in levels]).list.eval(
        pl.element().filter(pl.element().is_not_null() & ~pl.element().is_in(["", "empty", "UNKNOWN"]))
    )
    attr = [c for c in ("item_type", "upload_type") if c in raw_items.columns]
    items = raw_items.select(
        "item_id",
        *[pl.col(c) for c in attr],
        categories=cats,
        item_category=pl.col(CATEGORY_LEVELS[0]),
    ).with_columns(
        title=pl.when(pl.col("categories").list.len() > 0)
        .then(pl.col("categories").list.join(" / "))
        .otherwise(pl.lit("uncategorised video")),
    )
    # Search results that are not in item_features (live streams, profiles...): minimal rows.
    extra = (
        src_types.join(items.select("item_id"), on="item_id", how="anti")
        .group_by("item_id")
        .agg(pl.col("item_type").first())
    )
    extra_ids = set(
        inter.select("item_id").unique().join(items.select("item_id"), on="item_id", how="anti")["item_id"]
    )
    if extra_ids - set(extra["item_id"]):
        bad_id = sorted(extra_ids - set(extra["item_id"]))[0]
        raise DataError(f"{files['rec_inter']}: item_id {bad_id!r} is not in {files['item_features']}")
    if extra.height:
        log.info("kuaisar: %d search results have no item features; added with their item_type", extra.height)
        kind = pl.col("item_type").fill_null("ITEM").str.to_lowercase().str.replace_all("_", " ")
        extra_attrs = [
            (pl.col("item_type") if c == "item_type" else pl.lit(None, pl.String)).alias(c) for c in attr
        ]
        items = pl.concat(
            [
                items,
                extra.select(
                    "item_id",
                    *extra_attrs,
                    categories=pl.concat_list(kind),
                    item_category=kind,
                    title=pl.lit("search result: ") + kind,
                ),
            ],
            how="diagonal_relaxed",
        )
    items = items.with_columns(
        description=pl.lit("Short video in ") + pl.col("title") + pl.lit("."),
    ).select("item_id", "title", "categories", "description", "item_category", *attr)
    user_attrs = [c for c in users.columns if c != "user_id"]
    scenarios = pl.DataFrame(
        {
            "scenario_id": [s[0] for s in SCENARIOS],
            "name": [s[1] for s in SCENARIOS],
            "description": [s[2] for s in SCENARIOS],
        }
    )
    return RawData(
        interactions=inter,
        users=users.select("user_id", *user_attrs),
        items=items,
        scenarios=scenarios,
        has_timestamps=True,
        params={"dataset": "kuaisar", "files": {k: str(v) for k, v in files.items()}},
    )
