"""MovieLens adapter: the real RecBole ML-100K files, and tiny GroupLens / ML-1M files in their layouts."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from feature_store.adapters.movielens import detect_layout
from feature_store.build import build_dataset
from feature_store.dataset import DataError
from llm4msr.config import REPO_ROOT, DataConfig

ML100K = REPO_ROOT.parent / "shared" / "data" / "ml-100k"


def _cfg(path: Path, **ml) -> DataConfig:
    return DataConfig.model_validate({"dataset": "movielens", "path": str(path), "movielens": ml})


def write_grouplens(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    flags = ["0"] * 19
    action, comedy = flags.copy(), flags.copy()
    action[1], comedy[5], comedy[14] = "1", "1", "1"
    (folder / "u.item").write_bytes(
        (
            "1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(comedy) + "\n"
            "2|Caf\xe9 Noir (1996)|01-Jan-1996||http://y|" + "|".join(action) + "\n"
        ).encode("latin-1")
    )
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n3|30|M|writer|32067\n")
    rows = []
    for u in (1, 2, 3):
        for k in range(4):
            rows.append(f"{u}\t{1 + k % 2}\t{5 if k % 2 else 2}\t{880000000 + 100 * k + u}")
    (folder / "u.data").write_text("\n".join(rows) + "\n")
    return folder


def write_ml1m(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "movies.dat").write_text(
        "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Heat (1995)::Action|Crime\n"
    )
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n")
    rows = [
        f"{u}::{1 + k % 2}::{4 if k % 2 else 3}::{978300000 + 10 * k}" for u in (1, 2, 3) for k in range(5)
    ]
    (folder / "ratings.dat").write_text("\n".join(rows) + "\n")
    return folder


@pytest.mark.skipif(not ML100K.is_dir(), reason="the shared ML-100K files are not beside the repo")
def test_recbole_ml100k_real_files():
    ds = build_dataset(_cfg(ML100K))
    assert ds.interactions.height == 100_000
    assert ds.users.height == 943 and ds.items.height == 1682
    per = dict(ds.interactions.group_by("scenario_id").len().iter_rows())
    assert per == {
        "age_0_24": per["age_0_24"],
        "age_25_34": per["age_25_34"],
        "age_35_plus": per["age_35_plus"],
    }
    assert 26_000 < per["age_0_24"] < 27_200 and 35_000 < per["age_25_34"] < 36_000
    assert ds.interactions["label"].cast(pl.Float64).mean() == pytest.approx(0.5536, abs=1e-3)  # rating >= 4
    toy = ds.items.filter(pl.col("item_id") == "1").row(0, named=True)
    assert toy["title"] == "Toy Story" and toy["categories"] == ["Animation", "Children's", "Comedy"]
    assert ds.interactions.filter(pl.col("split") == "test")["user_id"].n_unique() == 943
    genre = build_dataset(_cfg(ML100K, scenario_by="genre"))
    assert genre.scenarios.height >= 15 and "drama" in genre.scenarios["scenario_id"].to_list()


def test_grouplens_layout(tmp_path):
    folder = write_grouplens(tmp_path / "ml")
    assert detect_layout(folder) == "grouplens"
    ds = build_dataset(_cfg(folder, label_threshold=4))
    assert ds.interactions.height == 12
    items = {r["item_id"]: r for r in ds.items.iter_rows(named=True)}
    assert items["2"]["title"] == "Caf\xe9 Noir" and items["2"]["categories"] == ["Action"]
    assert items["1"]["categories"] == ["Comedy", "Romance"]
    scen = dict(ds.interactions.select("user_id", "scenario_id").unique().iter_rows())
    assert scen == {"1": "age_0_24", "2": "age_35_plus", "3": "age_25_34"}
    # label = rating >= 4: item 2 got 5, item 1 got 2
    assert (ds.interactions.filter(pl.col("item_id") == "2")["label"] == 1).all()
    assert (ds.interactions.filter(pl.col("item_id") == "1")["label"] == 0).all()


def test_ml1m_layout(tmp_path):
    folder = write_ml1m(tmp_path / "ml1m")
    assert detect_layout(folder) == "ml1m"
    ds = build_dataset(_cfg(folder, age_bins=[18, 50]))
    assert ds.interactions.height == 15
    users = {r["user_id"]: r for r in ds.users.iter_rows(named=True)}
    assert users["1"]["occupation"] == "K-12 student" and users["1"]["age_group"] == "under 18"
    assert users["2"]["occupation"] == "self-employed"
    assert set(ds.scenarios["scenario_id"]) == {"age_0_17", "age_18_49", "age_50_plus"}
    assert ds.items.filter(pl.col("item_id") == "2")["title"][0] == "Heat"


def test_bad_movielens_inputs(tmp_path):
    with pytest.raises(DataError, match="no MovieLens files found"):
        build_dataset(_cfg(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_dataset(_cfg(tmp_path / "absent"))
    folder = write_ml1m(tmp_path / "bad")
    (folder / "ratings.dat").write_text("1::1::4::978300000\n2::1::four::978300001\n")
    with pytest.raises(DataError, match=r"ratings.dat: column 'rating' has value 'four' at data row 2"):
        build_dataset(_cfg(folder))
    (folder / "ratings.dat").write_text("1::1::4::978300000\n9::1::4::978300001\n")
    with pytest.raises(DataError, match=r"column 'user_id' has value '9' that is not in .*users.dat"):
        build_dataset(_cfg(folder))
    (folder / "ratings.dat").write_text("")
    with pytest.raises(DataError, match="ratings.dat: file is empty"):
        build_dataset(_cfg(folder))
    (folder / "ratings.dat").write_text("1::1::4::978300000\n")
    (folder / "movies.dat").write_text("1::A (1995)::Drama\n1::B (1996)::Comedy\n")
    with pytest.raises(DataError, match=r"movies.dat: duplicate key '1' in column 'item_id'"):
        build_dataset(_cfg(folder))


def test_recbole_misspelled_column(tmp_path):
    folder = tmp_path / "rb"
    folder.mkdir()
    (folder / "x.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t1\t4\t100\n"
    )
    (folder / "x.item").write_text("item_id:token\tmovie_titel:token_seq\tclass:token_seq\n1\tA\tDrama\n")
    (folder / "x.user").write_text("user_id:token\tage:token\tgender:token\toccupation:token\n1\t20\tM\tx\n")
    with pytest.raises(DataError, match=r"x.item: missing column 'movie_title'.*did you mean 'movie_titel'"):
        build_dataset(_cfg(folder))


def test_max_users_keeps_the_first_users_in_id_order(tmp_path):
    """A documented subset (movielens.max_users): the first N user ids, numerically, and only their
    ratings; the setting is recorded in the dataset's source and changes the dataset id."""
    from feature_store.build import build_and_write
    from feature_store.dataset import read_version

    folder = write_grouplens(tmp_path / "ml")
    (folder / "u.user").write_text(
        "1|24|M|technician|85711\n2|53|F|other|94043\n3|30|M|writer|32067\n10|40|F|writer|12345\n"
    )
    ds = build_dataset(_cfg(folder, max_users=2))
    assert sorted(ds.users["user_id"]) == ["1", "2"]  # numeric order: "10" is not second
    assert set(ds.interactions["user_id"]) == {"1", "2"} and ds.interactions.height == 8
    sub = build_and_write(_cfg(folder, max_users=2), tmp_path / "sub")
    full = build_and_write(_cfg(folder), tmp_path / "full")
    source = __import__("json").loads((sub / "manifest.json").read_text())["source"]
    assert source["config"]["movielens"]["max_users"] == 2
    assert read_version(sub) != read_version(full)
    assert build_dataset(_cfg(folder, max_users=100)).users.height == build_dataset(_cfg(folder)).users.height
