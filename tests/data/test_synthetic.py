"""The synthetic adapter: deterministic, skewed, and with a cross-scenario taste only history reveals."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from feature_store.adapters import synthetic
from feature_store.dataset import load_dataset
from llm4msr.config import DataConfig


def _cfg(seed: int = 0, **kw) -> DataConfig:
    base = {"n_users": 300, "n_items": 150, "n_interactions": 8000}
    return DataConfig.model_validate({"seed": seed, "synthetic": {**base, **kw}})


def test_deterministic_for_a_seed_and_different_across_seeds():
    a, b, c = synthetic.load(_cfg(0)), synthetic.load(_cfg(0)), synthetic.load(_cfg(1))
    assert a.interactions.equals(b.interactions)
    assert a.items.equals(b.items) and a.users.equals(b.users)
    assert not a.interactions.equals(c.interactions)


def test_shape_text_and_scenarios():
    raw = synthetic.load(_cfg(0))
    assert raw.interactions.height == 8000
    assert raw.users.height == 300 and raw.items.height == 150
    assert raw.scenarios["name"].to_list() == ["Grocery", "Kitchen", "Outdoors"]
    assert raw.scenarios["description"].str.len_chars().min() > 20
    assert "persona" not in raw.users.columns and "persona_name" not in raw.users.columns
    # Titles are readable English containing the primary category's words.
    for title, cat in raw.items.select("title", "item_category").iter_rows():
        assert title.endswith(cat), (title, cat)
    assert raw.items["categories"].list.len().min() == 2
    coffee = raw.items.filter(
        pl.col("item_category").is_in(["coffee beans", "espresso maker", "insulated coffee thermos"])
    )
    assert coffee.height > 0
    # Every item belongs to exactly one scenario: its interactions all carry that scenario.
    per_item = raw.interactions.group_by("item_id").agg(pl.col("scenario_id").n_unique())
    assert per_item["scenario_id"].max() == 1


def test_positive_rate_skew_and_timestamps():
    raw = synthetic.load(_cfg(0, n_users=1000, n_items=600, n_interactions=40_000))
    inter = raw.interactions
    assert 0.2 <= inter["label"].cast(pl.Float64).mean() <= 0.4
    per_user = inter.group_by("user_id").len().sort("len", descending=True)["len"].to_numpy()
    assert per_user.min() >= 3
    assert per_user[:100].sum() / per_user.sum() > 0.3  # top 10 % of users: heavy
    assert np.median(per_user) < 20  # most users are light
    per_item = inter.group_by("item_id").len().sort("len", descending=True)["len"].to_numpy()
    assert per_item[: len(per_item) // 10].sum() / per_item.sum() > 0.3  # popular items dominate
    users_multi = inter.group_by("user_id").agg(pl.col("scenario_id").n_unique())
    assert (users_multi["scenario_id"] >= 2).mean() > 0.7  # most users act in several scenarios
    ordered = inter.group_by("user_id", maintain_order=True).agg(
        ok=(pl.col("timestamp").diff().drop_nulls() > 0).all()
    )
    assert ordered["ok"].all()


def _taste_from_other_scenarios(raw, personas: pl.DataFrame) -> tuple[float, float]:
    """Accuracy of guessing a user's interest from positives in *other* scenarios vs. chance."""
    cats = synthetic.category_names(3, 12)
    cat_to_k = {name: k for row in cats for k, name in enumerate(row)}
    df = raw.interactions.join(raw.items.select("item_id", "item_category"), on="item_id").with_columns(
        k=pl.col("item_category").replace_strict(cat_to_k, return_dtype=pl.Int64)
    )
    pos = df.filter((pl.col("label") == 1) & (pl.col("scenario_id") != "outdoors"))
    guess = (
        pos.group_by("user_id", "k")
        .len()
        .sort(["user_id", "len", "k"], descending=[False, True, False])
        .group_by("user_id", maintain_order=True)
        .first()
    )
    joined = guess.join(personas, on="user_id")
    return float((joined["k"] == joined["persona"]).mean()), 1.0 / 12


def test_taste_carries_across_scenarios_and_taste_strength_controls_it():
    cfg = _cfg(0, n_users=600, n_items=360, n_interactions=20_000)
    personas = synthetic.latent_personas(cfg)
    acc, chance = _taste_from_other_scenarios(synthetic.load(cfg), personas)
    assert acc > 4 * chance
    # The matched category in a held-out scenario has a much higher CTR than the rest.
    raw = synthetic.load(cfg)
    cats = synthetic.category_names(3, 12)
    pref = personas.with_columns(
        pref=pl.col("persona").map_elements(lambda k: cats[2][k], return_dtype=pl.String)
    )
    out = (
        raw.interactions.filter(pl.col("scenario_id") == "outdoors")
        .join(raw.items.select("item_id", "item_category"), on="item_id")
        .join(pref, on="user_id")
    )
    ctr = out.group_by(match=pl.col("item_category") == pl.col("pref")).agg(pl.col("label").mean())
    ctr = dict(ctr.iter_rows())
    assert ctr[True] > ctr[False] + 0.25
    flat = _cfg(0, n_users=600, n_items=360, n_interactions=20_000, taste_strength=0.0)
    acc0, _ = _taste_from_other_scenarios(synthetic.load(flat), personas)
    assert acc0 < acc - 0.2


@pytest.mark.parametrize("n_scenarios,n_categories", [(8, 40), (4, 4)])
def test_more_scenarios_and_categories(n_scenarios, n_categories):
    cfg = _cfg(3, n_scenarios=n_scenarios, n_categories=n_categories, n_items=400)
    raw = synthetic.load(cfg)
    assert raw.scenarios.height == n_scenarios
    assert raw.interactions["scenario_id"].n_unique() == n_scenarios
    names = synthetic.category_names(n_scenarios, n_categories)
    assert all(len(set(row)) == n_categories for row in names)  # distinct categories per scenario
    assert raw.items["item_category"].n_unique() <= n_scenarios * n_categories


def test_too_few_interactions_is_a_clear_error():
    with pytest.raises(ValueError, match="n_interactions=1000 is smaller than n_users=2000"):
        synthetic.load(DataConfig.model_validate({"synthetic": {"n_users": 2000, "n_interactions": 1000}}))


def test_shared_fixture_is_a_valid_dataset(small_dataset_dir, small_dataset_config):
    ds = load_dataset(small_dataset_dir, verify_checksums=True)
    assert ds.interactions.height == small_dataset_config.synthetic.n_interactions
    assert set(ds.interactions["split"].unique()) == {"train", "valid", "test"}
    assert ds.vocabs is not None and {"user_id", "item_id", "scenario_id", "item_category"} <= set(ds.vocabs)
    assert ds.manifest["source"]["features"]["item_category"] == "item"


@pytest.mark.parametrize("history", ["mixed", "one"])
def test_new_scenario_users_are_cold_where_they_are_held_out(history):
    """Users entering a new scenario: their last rows are in a scenario none of their earlier rows is
    in; with history="one" the earlier rows are all in one other scenario."""
    tail = 3
    raw = synthetic.load(
        _cfg(0, min_per_user=6, new_scenario_share=1.0, new_scenario_tail=tail, new_scenario_history=history)
    )
    ranked = raw.interactions.sort("user_id", "timestamp").with_columns(
        pos=pl.int_range(pl.len()).over("user_id"), n=pl.len().over("user_id")
    )
    per_user = ranked.group_by("user_id").agg(
        tail=pl.col("scenario_id").filter(pl.col("pos") >= pl.col("n") - tail).unique(),
        early=pl.col("scenario_id").filter(pl.col("pos") < pl.col("n") - tail).unique(),
    )
    for row in per_user.iter_rows(named=True):
        assert len(row["tail"]) == 1 and row["tail"][0] not in row["early"], row
        if history == "one":
            assert len(row["early"]) == 1, row
    # share 0 is the unchanged default data
    assert synthetic.load(_cfg(0, new_scenario_share=0.0)).interactions.equals(
        synthetic.load(_cfg(0)).interactions
    )
