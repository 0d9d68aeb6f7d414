"""Temporal splits, training cutoffs and vocabularies."""

from __future__ import annotations

import polars as pl
import pytest

from feature_store.dataset import load_dataset
from feature_store.splits import assign_splits, train_cutoffs
from feature_store.vocab import UNKNOWN_INDEX, fit_vocabs, lookup
from llm4msr.config import SplitConfig


def _inter(rows: list[tuple[str, str, str, int, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={
            "user_id": pl.String,
            "item_id": pl.String,
            "scenario_id": pl.String,
            "label": pl.Int8,
            "timestamp": pl.Int64,
        },
        orient="row",
    )


def _user_rows(uid: str, n: int, scen: str = "a", start: int = 100) -> list:
    return [(uid, f"i{k}", scen, k % 2, start + k) for k in range(n)]


def test_leave_last_n_holds_out_the_latest_and_keeps_small_users_in_train():
    rows = _user_rows("u1", 6)[::-1] + _user_rows("u2", 2) + _user_rows("u3", 3)
    df = assign_splits(_inter(rows), SplitConfig(), seed=0)
    u1 = df.filter(pl.col("user_id") == "u1")
    assert u1["split"].to_list() == ["train"] * 4 + ["valid", "test"]
    assert u1["timestamp"].is_sorted()
    assert df.filter(pl.col("user_id") == "u2")["split"].to_list() == ["train", "train"]
    assert df.filter(pl.col("user_id") == "u3")["split"].to_list() == ["train", "valid", "test"]
    cut = dict(train_cutoffs(df).iter_rows())
    assert cut == {"u1": 103, "u2": 101, "u3": 100}


def test_timestamp_ties_at_the_boundary_never_straddle_the_cutoff():
    rows = [("u", "a", "s", 1, 10), ("u", "b", "s", 0, 20), ("u", "c", "s", 1, 20), ("u", "d", "s", 1, 30)]
    df = assign_splits(_inter(rows), SplitConfig(n_valid=1, n_test=1), seed=0)
    # b and c share t=20: one event, held out together (valid); a stays in train
    assert df["split"].to_list() == ["train", "valid", "valid", "test"]
    # only two events: holding out valid + test would leave no training event -> all train
    rows = [("v", "a", "s", 1, 10), ("v", "b", "s", 0, 10), ("v", "c", "s", 1, 10), ("v", "d", "s", 1, 30)]
    df2 = assign_splits(_inter(rows), SplitConfig(n_valid=1, n_test=1), seed=0)
    assert df2["split"].to_list() == ["train"] * 4
    df3 = assign_splits(_inter(rows), SplitConfig(n_valid=0, n_test=1), seed=0)
    assert df3["split"].to_list() == ["train", "train", "train", "test"]
    for d in (df, df3):
        cutoff = train_cutoffs(d)["train_cutoff"][0]
        assert (d.filter(pl.col("split") != "train")["timestamp"] > cutoff).all()


def test_ratio_and_per_scenario():
    rows = _user_rows("u", 20, "a") + _user_rows("u", 10, "b", start=1000)
    df = assign_splits(_inter(rows), SplitConfig(strategy="ratio", valid_ratio=0.1, test_ratio=0.2), seed=0)
    counts = dict(df.group_by("split").len().iter_rows())
    assert counts == {"train": 21, "valid": 3, "test": 6}
    assert (df.filter(pl.col("split") == "test")["timestamp"] >= 1000).all()
    per = assign_splits(_inter(rows), SplitConfig(per_scenario=True), seed=0)
    held = per.filter(pl.col("split") != "train").group_by("scenario_id", "split").len()
    assert held.height == 4 and held["len"].to_list() == [1, 1, 1, 1]


def test_random_split_is_seeded_and_used_without_timestamps():
    rows = [(f"u{k % 50}", f"i{k}", "a", 1, 0) for k in range(4000)]
    cfg = SplitConfig(valid_ratio=0.1, test_ratio=0.2)
    a = assign_splits(_inter(rows), cfg, seed=7, has_timestamps=False)
    b = assign_splits(_inter(rows), cfg, seed=7, has_timestamps=False)
    c = assign_splits(_inter(rows), cfg, seed=8, has_timestamps=False)
    assert a.equals(b) and not a.equals(c)
    share = a["split"].value_counts(normalize=True)
    share = dict(share.iter_rows())
    assert share["test"] == pytest.approx(0.2, abs=0.03) and share["valid"] == pytest.approx(0.1, abs=0.03)


def test_vocabs_fit_on_train_only_with_zero_for_unknown():
    rows = (
        _user_rows("u1", 5)
        + _user_rows("u2", 5)
        + [("u3", "i0", "a", 1, 400), ("u3", "only_test", "a", 1, 500), ("u4", "only_u4", "a", 0, 600)]
    )
    df = assign_splits(_inter(rows), SplitConfig(n_valid=0, n_test=1), seed=0)
    users = pl.DataFrame({"user_id": ["u1", "u2", "u3", "u4"], "g": ["x", "y", "x", "w"]})
    items = pl.DataFrame(
        {
            "item_id": [f"i{k}" for k in range(5)] + ["only_test", "only_u4"],
            "item_category": ["c1"] * 4 + ["c2", "c9", "c3"],
        }
    )
    v = fit_vocabs(df, users, items)
    assert "i4" not in v["item_id"] and "only_test" not in v["item_id"]  # held out by both users
    assert "only_u4" in v["item_id"]  # u4 has a single row: kept in train
    assert set(v["user_id"]) == {"u1", "u2", "u3", "u4"}
    assert v["g"] == {"x": 1, "y": 2, "w": 3}  # by training frequency: x 5 rows, y 4, w 1
    assert set(v["item_category"]) == {"c1", "c3"}  # c2 (i4) and c9 (only_test) are never trained on
    assert min(min(m.values()) for m in v.values()) == 1  # 0 is reserved
    for m in v.values():
        assert sorted(m.values()) == list(range(1, len(m) + 1))
    assert lookup(v["item_id"], pl.Series(["i0", "nope", None]))[1:].to_list() == [UNKNOWN_INDEX] * 2


def test_fixture_split_invariants(small_dataset_dir):
    ds = load_dataset(small_dataset_dir)
    inter = ds.interactions.join(ds.users.select("user_id", "train_cutoff"), on="user_id")
    held = inter.filter(pl.col("split") != "train")
    assert (held["timestamp"] > held["train_cutoff"]).all()
    train = inter.filter(pl.col("split") == "train")
    assert (train["timestamp"] <= train["train_cutoff"]).all()
    assert held.filter(pl.col("split") == "test")["user_id"].n_unique() == ds.users.height
    assert set(ds.vocabs["item_id"]) <= set(train["item_id"].unique())
