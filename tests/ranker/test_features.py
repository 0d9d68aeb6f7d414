"""Scenario-constant features (ranker.features.scenario_constant_features): found from the training
rows, the same when the distributed main process sees only the distinct pairs, and kept out of
STAR's tower."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from feature_store.dataset import CanonicalDataset, load_dataset
from llm4msr.config import load_config
from ranker.distributed import _spec_on_main
from ranker.features import FeatureSpec, build_spec
from ranker.model import build_model
from tests.ranker.helpers import FAST_TRAIN, make_dataset


def _category_is_scenario(tmp_path: Path) -> CanonicalDataset:
    """The tiny dataset with each row's scenario set to its item's category (as in Amazon
    Food-Kitchen, where the domain is the item's category)."""
    data, _ = make_dataset(tmp_path / "data", n_categories=4)
    ds = load_dataset(data)
    cat = ds.items.select("item_id", pl.col("categories").list.first().str.replace("c", "s").alias("s"))
    inter = ds.interactions.join(cat, on="item_id").with_columns(pl.col("s").alias("scenario_id")).drop("s")
    scenarios = pl.DataFrame(
        {"scenario_id": [f"s{s}" for s in range(4)], "name": [f"scenario {s}" for s in range(4)]}
    ).with_columns(pl.lit("test scenario").alias("description"))
    return CanonicalDataset(
        interactions=inter.select(ds.interactions.columns),
        users=ds.users,
        items=ds.items,
        scenarios=scenarios,
    )


def test_a_field_with_one_value_per_scenario_is_found(tmp_path: Path) -> None:
    ds = _category_is_scenario(tmp_path)
    spec = build_spec(ds, 0)
    assert spec.scenario_constant == ["item_category"]
    # round trip, and a spec file written before the field existed reads as "none found"
    assert FeatureSpec.from_dict(spec.to_dict()).scenario_constant == ["item_category"]
    old = spec.to_dict()
    del old["scenario_constant"]
    assert FeatureSpec.from_dict(old).scenario_constant == []


def test_random_scenarios_have_none(tiny_data: Path) -> None:
    assert build_spec(load_dataset(tiny_data), 0).scenario_constant == []


def test_the_distributed_main_process_finds_the_same(tmp_path: Path) -> None:
    ds = _category_is_scenario(tmp_path)
    assert _spec_on_main(ds, ds.interactions.lazy(), 8).to_dict() == build_spec(ds, 8).to_dict()


def test_star_keeps_a_scenario_constant_field_out_of_its_tower(tmp_path: Path) -> None:
    spec = build_spec(_category_is_scenario(tmp_path), 0)
    cfg = load_config(overrides=[*FAST_TRAIN, "train.backbone=star", "train.use_llm=false"]).train
    star = build_model(spec, cfg).backbone
    category = spec.index_of("item_category")
    assert category in star.ctx.scenario_constant_fields
    assert category not in star.tower_fields.tolist()
    assert star.norm.gamma.shape[0] == (spec.n_features - 2) * star.ctx.emb_dim
