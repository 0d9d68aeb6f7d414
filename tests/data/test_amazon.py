"""Amazon adapter: the real food-kitchen sequences, a tiny sequence folder and a tiny reviews JSON-lines folder."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from feature_store.build import build_dataset
from feature_store.dataset import DataError
from llm4msr.config import REPO_ROOT, DataConfig

FOOD_KITCHEN = REPO_ROOT.parent / "shared" / "data" / "amazon-food-kitchen"


def _cfg(path: Path, k: int = 1, seed: int = 0) -> DataConfig:
    return DataConfig.model_validate(
        {"dataset": "amazon", "path": str(path), "seed": seed, "amazon": {"negatives_per_positive": k}}
    )


def write_sequences(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    a = {f"A{i}": i for i in range(6)}
    b = {f"B{i}": i for i in range(8)}
    (folder / "num.txt").write_text("6\n8\n")
    (folder / "item_set_A.json").write_text(json.dumps(a))
    (folder / "item_set_B.json").write_text(json.dumps(b))
    (folder / "text_A.json").write_text(json.dumps({k: f"organic snack {k}" for k in a}))
    (folder / "text_B.json").write_text(json.dumps({k: f"steel pan {k}" for k in b}))
    (folder / "train_A.txt").write_text("1\t0,1,2,\n2\t3,4\n")
    (folder / "train_B.txt").write_text("1\t6,7,8,9\n")
    (folder / "train_overlap.txt").write_text("1\t0,6,1,7,2\n")
    (folder / "valid.txt").write_text("1\t5,10,11,4\n")
    (folder / "test.txt").write_text("1\t3,12,13\n")
    return folder


@pytest.mark.slow
@pytest.mark.skipif(not FOOD_KITCHEN.is_dir(), reason="the shared Amazon files are not beside the repo")
def test_real_food_kitchen():
    ds = build_dataset(_cfg(FOOD_KITCHEN))
    assert ds.scenarios["name"].to_list() == ["Grocery", "Kitchen"]
    assert ds.items.height == 8661 + 27637
    n_users = 5472 + 38191 + 7501 + 960 + 937
    assert ds.users.height == n_users
    assert ds.interactions["label"].cast(pl.Float64).mean() == pytest.approx(0.5, abs=1e-3)
    overlap = ds.interactions.filter(pl.col("user_id").str.starts_with("train_overlap_"))
    assert overlap.group_by("user_id").agg(pl.col("scenario_id").n_unique())["scenario_id"].min() == 2
    kit = ds.items.filter(pl.col("categories").list.first() == "Kitchen")
    assert kit.height == 27637 and kit["title"].str.len_chars().min() > 0


def test_tiny_sequences_ids_domains_negatives(tmp_path):
    folder = write_sequences(tmp_path / "fk")
    ds = build_dataset(_cfg(folder, k=2))
    inter = ds.interactions
    assert set(ds.users["user_id"]) == {
        "train_A_1",
        "train_A_2",
        "train_B_1",
        "train_overlap_1",
        "valid_1",
        "test_1",
    }
    pos = inter.filter(pl.col("label") == 1)
    assert pos.height == 3 + 2 + 4 + 5 + 4 + 3  # trailing comma ignored
    assert inter.filter(pl.col("label") == 0).height == 2 * pos.height
    # Domain follows the global id; negatives come from the positive's domain, never the user's positives.
    dom = {i: ("grocery" if i.startswith("A") else "kitchen") for i in ds.items["item_id"]}
    assert all(dom[i] == s for i, s in inter.select("item_id", "scenario_id").iter_rows())
    owned = pos.select("user_id", "item_id").unique()
    assert inter.filter(pl.col("label") == 0).join(owned, on=["user_id", "item_id"], how="semi").height == 0
    ov = inter.filter(pl.col("user_id") == "train_overlap_1").sort("timestamp")
    assert ov.filter(pl.col("label") == 1)["item_id"].to_list() == ["A0", "B0", "A1", "B1", "A2"]
    # The last event (positive + its 2 negatives) is the test window.
    test = ov.filter(pl.col("split") == "test")
    assert test.height == 3 and test["label"].sum() == 1 and test["timestamp"].n_unique() == 1
    assert ds.items.filter(pl.col("item_id") == "B3")["title"][0] == "steel pan B3"
    # Seeded: same seed same negatives, another seed other negatives.
    assert build_dataset(_cfg(folder, k=2)).interactions.equals(inter)
    assert not build_dataset(_cfg(folder, k=2, seed=1)).interactions.equals(inter)


def test_bad_sequences(tmp_path):
    folder = write_sequences(tmp_path / "fk")
    (folder / "train_B.txt").write_text("1\t6,7,99\n")
    with pytest.raises(DataError, match=r"train_B.txt: line 1: item id '99' is not an integer in 0..13"):
        build_dataset(_cfg(folder))
    (folder / "train_B.txt").write_text("1\t6,x\n")
    with pytest.raises(DataError, match=r"train_B.txt: line 1: item id 'x'"):
        build_dataset(_cfg(folder))
    (folder / "train_B.txt").write_text("")
    with pytest.raises(DataError, match="train_B.txt: file is empty"):
        build_dataset(_cfg(folder))
    (folder / "train_B.txt").unlink()
    with pytest.raises(FileNotFoundError, match="train_B.txt does not exist"):
        build_dataset(_cfg(folder))


def write_reviews(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    food = [
        {
            "reviewerID": f"U{u}",
            "asin": f"F{(u + k) % 5}",
            "overall": 5.0,
            "unixReviewTime": 1400000000 + k * 86400,
        }
        for u in range(4)
        for k in range(4)
    ]
    tools = [
        {"user_id": f"U{u}", "parent_asin": f"T{(u * k) % 4}", "rating": 4.0, "timestamp": 1600000000000 + k}
        for u in range(2, 6)
        for k in range(3)
    ]
    (folder / "reviews_Grocery_and_Gourmet_Food_5.json").write_text("\n".join(json.dumps(r) for r in food))
    with gzip.open(folder / "Tools.jsonl.gz", "wt") as fh:
        fh.write("\n".join(json.dumps(r) for r in tools))
    meta = [
        repr(
            {
                "asin": f"F{i}",
                "title": f"Dark roast coffee {i}",
                "categories": [["Grocery & Gourmet Food", "Coffee"]],
            }
        )
        for i in range(5)
    ]
    (folder / "meta_Grocery_and_Gourmet_Food.json").write_text("\n".join(meta))  # 2014 python-literal lines
    (folder / "meta_Tools.jsonl").write_text(
        "\n".join(
            json.dumps(
                {
                    "parent_asin": f"T{i}",
                    "title": f"Hammer {i}",
                    "main_category": "Tools",
                    "description": ["Solid steel."],
                }
            )
            for i in range(3)
        )
    )
    return folder


def test_reviews_json_lines(tmp_path):
    ds = build_dataset(_cfg(write_reviews(tmp_path / "rev"), k=1))
    assert set(ds.scenarios["scenario_id"]) == {"grocery_and_gourmet_food", "tools"}
    items = {r["item_id"]: r for r in ds.items.iter_rows(named=True)}
    assert items["F1"]["title"] == "Dark roast coffee 1"
    assert (
        items["F1"]["categories"] == ["Grocery & Gourmet Food", "Coffee"]
        and items["F1"]["item_category"] == "Coffee"
    )
    assert items["T0"]["description"] == "Solid steel." and items["T0"]["categories"] == ["Tools"]
    assert items["T3"]["title"] == "T3"  # no metadata: the id stands in
    u2 = ds.interactions.filter(pl.col("user_id") == "U2")
    assert set(u2["scenario_id"]) == {"grocery_and_gourmet_food", "tools"}  # one user across domains
    tools_ts = ds.interactions.filter(pl.col("scenario_id") == "tools")["timestamp"]
    assert tools_ts.max() < 2_000_000_000  # milliseconds were converted to seconds


def test_bad_reviews(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "Food.jsonl").write_text(
        json.dumps({"reviewer": "U1", "asin": "F1", "unixReviewTime": 1}) + "\n"
    )
    with pytest.raises(DataError, match=r"Food.jsonl: missing column 'reviewerID' or 'user_id'"):
        build_dataset(_cfg(folder))
    (folder / "Food.jsonl").write_text(
        json.dumps({"reviewerID": "U1", "asin": "F1", "unixReviewTime": "soon"})
    )
    with pytest.raises(DataError, match=r"column 'unixReviewTime' has value 'soon'"):
        build_dataset(_cfg(folder))
    (folder / "Food.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match=r"Food.jsonl: line 1 is not a JSON object"):
        build_dataset(_cfg(folder))
    (folder / "Food.jsonl").unlink()
    with pytest.raises(DataError, match="no Amazon files found"):
        build_dataset(_cfg(folder))
