"""Train/valid/test splits and each user's training cutoff.

Temporal per user (the default) because user-level prompts may only describe the past: the last
*events* of each user are held out, and `train_cutoff` (the user's last training timestamp)
bounds what a prompt may use. An event is one distinct timestamp, so rows that share a second
(ML-100K) or a positive with its sampled negatives (Amazon) stay together, and every held-out
row is strictly later than its user's cutoff. With `per_scenario=True` the last events of each
user *in each scenario* are held out; then the cutoff bound holds per scenario only and prompts
must select split == "train". Users with too few events keep everything in train. Data without
a real event order is split at random (seeded) by the ratios.
"""

from __future__ import annotations

import logging

import numpy as np
import polars as pl

from llm4msr.config import SplitConfig

log = logging.getLogger(__name__)

MIN_TRAIN = 1  # a user needs at least this many training rows before anything is held out


def _event_position(keys: list[str]) -> tuple[pl.Expr, pl.Expr]:
    """(events of the group, position of the row's event counted from the last = 0).

    An event is one distinct timestamp: rows recorded in the same second (ML-100K) or a positive and
    its sampled negatives (Amazon) are held out or kept together, so a held-out window never shares
    a timestamp with training data and always contains whole impressions.
    """
    n_events = pl.col("timestamp").n_unique().over(keys).cast(pl.Int64)
    from_end = (pl.col("timestamp").rank("dense", descending=True).cast(pl.Int64) - 1).over(keys)
    return n_events, from_end


def _leave_last_n(cfg: SplitConfig, keys: list[str]) -> pl.Expr:
    held = cfg.n_valid + cfg.n_test
    n_events, from_end = _event_position(keys)
    return (
        pl.when(n_events < held + MIN_TRAIN).then(pl.lit("train"))
        .when(from_end < cfg.n_test).then(pl.lit("test"))
        .when(from_end < held).then(pl.lit("valid"))
        .otherwise(pl.lit("train"))
    )


def _ratio(cfg: SplitConfig, keys: list[str]) -> pl.Expr:
    n_events, from_end = _event_position(keys)
    n_test = (n_events.cast(pl.Float64) * cfg.test_ratio).floor().cast(pl.Int64)
    n_valid = (n_events.cast(pl.Float64) * cfg.valid_ratio).floor().cast(pl.Int64)
    return (
        pl.when(n_events - n_test - n_valid < MIN_TRAIN).then(pl.lit("train"))
        .when(from_end < n_test).then(pl.lit("test"))
        .when(from_end < n_test + n_valid).then(pl.lit("valid"))
        .otherwise(pl.lit("train"))
    )


def assign_splits(interactions: pl.DataFrame, cfg: SplitConfig, *, seed: int,
                  has_timestamps: bool = True) -> pl.DataFrame:
    """Return the interactions sorted by (user_id, timestamp) with a `split` column added.

    strategy leave_last_n / ratio: temporal per user (per user and scenario if cfg.per_scenario);
    random, or any strategy when `has_timestamps` is False: each row goes to test / valid with
    probability test_ratio / valid_ratio, seeded.
    """
    strategy = cfg.strategy
    if not has_timestamps and strategy != "random":
        log.warning("the source has no real timestamps: using a seeded random split instead of %s", strategy)
        strategy = "random"
    # A stable row order first, so ties and the random split are deterministic.
    df = interactions.with_row_index("_row").sort(["user_id", "timestamp", "_row"])
    if strategy == "random":
        u = np.random.default_rng([seed, 101]).random(df.height)
        split = np.where(u < cfg.test_ratio, "test", np.where(u < cfg.test_ratio + cfg.valid_ratio, "valid", "train"))
        return df.with_columns(split=pl.Series(split, dtype=pl.String)).drop("_row")
    keys = ["user_id", "scenario_id"] if cfg.per_scenario else ["user_id"]
    expr = _leave_last_n(cfg, keys) if strategy == "leave_last_n" else _ratio(cfg, keys)
    df = df.with_columns(split=expr)
    return df.drop("_row")


def train_cutoffs(interactions: pl.DataFrame) -> pl.DataFrame:
    """user_id -> train_cutoff (int64): the last training timestamp of each user with training rows."""
    return (
        interactions.filter(pl.col("split") == "train")
        .group_by("user_id")
        .agg(train_cutoff=pl.col("timestamp").max().cast(pl.Int64))
    )
