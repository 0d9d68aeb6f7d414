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


SPLIT_NAMES = np.array(["train", "valid", "test"], dtype=object)


def _event_positions(df: pl.DataFrame, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per row of `df` (sorted by keys, then timestamp): (events in its group, its event's position
    counted from the group's last event = 0).

    An event is one distinct timestamp: rows recorded in the same second (ML-100K) or a positive and
    its sampled negatives (Amazon) are held out or kept together, so a held-out window never shares
    a timestamp with training data and always contains whole impressions. Pure O(n) numpy on
    boundaries of the sorted frame (no per-group window functions), for 10-million-row datasets.
    """
    flags = df.select(
        new_group=pl.any_horizontal([pl.col(k) != pl.col(k).shift(1) for k in keys]).fill_null(True),
        new_ts=(pl.col("timestamp") != pl.col("timestamp").shift(1)).fill_null(True),
    )
    new_group = flags["new_group"].to_numpy()
    new_event = new_group | flags["new_ts"].to_numpy()
    event = np.cumsum(new_event) - 1  # global event index
    group = np.cumsum(new_group) - 1
    group_first_row = np.flatnonzero(new_group)
    first_event = event[group_first_row]
    last_event = np.concatenate([first_event[1:] - 1, [event[-1]]]) if len(event) else first_event
    n_events = (last_event - first_event + 1)[group]
    from_end = last_event[group] - event
    return n_events, from_end


def _split_codes(
    n_events: np.ndarray, from_end: np.ndarray, n_valid: np.ndarray | int, n_test: np.ndarray | int
) -> np.ndarray:
    """0 train, 1 valid, 2 test; groups that would keep fewer than MIN_TRAIN events stay in train."""
    code = np.where(from_end < n_test, 2, np.where(from_end < n_test + n_valid, 1, 0)).astype(np.int8)
    code[n_events - n_test - n_valid < MIN_TRAIN] = 0
    return code


def assign_splits(
    interactions: pl.DataFrame, cfg: SplitConfig, *, seed: int, has_timestamps: bool = True
) -> pl.DataFrame:
    """Return the interactions sorted by (user_id, timestamp) with a `split` column added.

    strategy leave_last_n / ratio: temporal per user (per user and scenario if cfg.per_scenario),
    counted in events (distinct timestamps; ratio: floor(share x events)); random, or any strategy
    when `has_timestamps` is False: each row goes to test / valid with probability
    test_ratio / valid_ratio, seeded.
    """
    strategy = cfg.strategy
    if not has_timestamps and strategy != "random":
        log.warning("the source has no real timestamps: using a seeded random split instead of %s", strategy)
        strategy = "random"
    # A stable row order first, so ties and the random split are deterministic.
    keys = ["user_id", "scenario_id"] if cfg.per_scenario else ["user_id"]
    df = interactions.with_row_index("_row").sort([*keys, "timestamp", "_row"])
    if strategy == "random":
        u = np.random.default_rng([seed, 101]).random(df.height)
        code = np.where(u < cfg.test_ratio, 2, np.where(u < cfg.test_ratio + cfg.valid_ratio, 1, 0))
    else:
        n_events, from_end = _event_positions(df, keys)
        if strategy == "leave_last_n":
            code = _split_codes(n_events, from_end, cfg.n_valid, cfg.n_test)
        else:
            n_test = np.floor(n_events * cfg.test_ratio).astype(np.int64)
            n_valid = np.floor(n_events * cfg.valid_ratio).astype(np.int64)
            code = _split_codes(n_events, from_end, n_valid, n_test)
    split = pl.Series("split", SPLIT_NAMES, dtype=pl.String).gather(code)
    df = df.with_columns(split)
    if cfg.per_scenario:
        df = df.sort(["user_id", "timestamp", "_row"])
    return df.drop("_row")


def train_cutoffs(interactions: pl.DataFrame) -> pl.DataFrame:
    """user_id -> train_cutoff (int64): the last training timestamp of each user with training rows."""
    return (
        interactions.filter(pl.col("split") == "train")
        .group_by("user_id")
        .agg(train_cutoff=pl.col("timestamp").max().cast(pl.Int64))
    )
