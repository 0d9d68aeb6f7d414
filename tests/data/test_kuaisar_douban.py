"""KuaiSAR (official CSV layout) and Douban adapters, including their bad-input errors."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from feature_store.build import build_dataset
from feature_store.dataset import DataError
from llm4msr.config import DataConfig
from pipelines.cli import main


def write_kuaisar(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rec = [
        "user_id,item_id,playing_time,duration_ms,time,timestamp,click,forward,like,follow,search,search_item_related"
    ]
    src = [
        "user_id,search_session_id,search_session_time,search_session_timestamp,keyword,search_source,item_id,"
        "click_cnt,item_type"
    ]
    for u in range(1, 5):
        for k in range(4):
            ts = 1684742000000 + u * 10_000_000 + k * 60_000
            rec.append(
                f"{u},{1 + (u + k) % 3},60792.0,45400.0,2023-05-22 15:53:20,{ts:.6e},{(u + k) % 2},0,0,0,0,0"
            )
            src.append(
                f'{u},{k},2023-05-22 21:58:52,{ts + 30_000},"[20, 34, 3]",USER_INPUT,{2 + k % 2},{k % 3},VIDEO'
            )
    src.append('4,9,2023-05-23 10:00:00,1684900000000,"[1]",USER_INPUT,103656000000,1,LIVE')
    (folder / "rec_inter.csv").write_text("\n".join(rec) + "\n")
    (folder / "src_inter.csv").write_text("\n".join(src) + "\n")
    (folder / "user_features.csv").write_text(
        "user_id,search_active_level,rec_active_level,onehot_feat1,onehot_feat2\n"
        + "".join(f"{u},{u % 3},{(u + 1) % 3},{u % 2},{u}\n" for u in range(1, 5))
    )
    head = (
        "item_id,caption,author_id,item_type,upload_time,upload_type,first_level_category_id,"
        "first_level_category_name,first_level_category_name_en,second_level_category_id,"
        "second_level_category_name,second_level_category_name_en,third_level_category_id,"
        "third_level_category_name,third_level_category_name_en,fourth_level_category_id,"
        "fourth_level_category_name,fourth_level_category_name_en\n"
    )
    rows = [
        '1,"[1, 213, 24]",10,NORMAL,2023-04-22,LongImport,9,搞笑,Funny,136,搞笑段子,Funny joke,0,空,empty,0,空,empty',
        '2,"[5]",11,NORMAL,2023-04-20,ShortImport,3,美食,Food,40,家常菜,Home cooking,0,空,empty,0,空,empty',
        '3,"[7, 8]",12,NORMAL,2023-04-21,LongImport,3,美食,Food,41,烘焙,Baking,0,空,empty,0,空,empty',
    ]
    (folder / "item_features.csv").write_text(head + "\n".join(rows) + "\n")
    return folder


def _cfg(dataset: str, path: Path, **kw) -> DataConfig:
    return DataConfig.model_validate({"dataset": dataset, "path": str(path), **kw})


def test_kuaisar_official_layout(tmp_path):
    ds = build_dataset(_cfg("kuaisar", write_kuaisar(tmp_path / "k")))
    assert set(ds.scenarios["scenario_id"]) == {"search", "recommendation"}
    per = dict(ds.interactions.group_by("scenario_id").len().iter_rows())
    assert per == {"recommendation": 16, "search": 17}
    items = {r["item_id"]: r for r in ds.items.iter_rows(named=True)}
    assert items["1"]["title"] == "Funny / Funny joke" and items["1"]["categories"] == ["Funny", "Funny joke"]
    assert items["2"]["item_category"] == "Food"
    assert items["103656000000"]["title"] == "search result: live"  # search-only item
    assert ds.interactions["timestamp"].max() < 2_000_000_000  # milliseconds -> seconds
    src = ds.interactions.filter(pl.col("scenario_id") == "search")
    assert set(src["label"].unique()) == {0, 1}  # click_cnt > 0
    assert {"search_active_level", "onehot_feat2"} <= set(ds.users.columns)
    assert "onehot_feat2" in ds.vocabs


def test_kuaisar_bad_inputs(tmp_path):
    folder = write_kuaisar(tmp_path / "k")
    text = (folder / "rec_inter.csv").read_text()
    (folder / "rec_inter.csv").write_text(text.replace(",click,", ",clik,", 1))
    with pytest.raises(DataError, match=r"rec_inter.csv: missing column 'click'.*did you mean 'clik'"):
        build_dataset(_cfg("kuaisar", folder))
    lines = text.splitlines()
    lines[1] = lines[1].rsplit(",", 6)[0] + ",2,0,0,0,0,0"
    (folder / "rec_inter.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DataError, match=r"rec_inter.csv: column 'click' has value 2 at data row 1, expected 0 or 1"
    ):
        build_dataset(_cfg("kuaisar", folder))
    (folder / "rec_inter.csv").write_text(text)
    feats = (folder / "user_features.csv").read_text()
    (folder / "user_features.csv").write_text(feats + "1,0,0,0,0\n")
    with pytest.raises(DataError, match=r"user_features.csv: duplicate key '1' in column 'user_id'"):
        build_dataset(_cfg("kuaisar", folder))
    (folder / "user_features.csv").write_text(feats.splitlines()[0] + "\n")
    with pytest.raises(DataError, match="user_features.csv: file has a header but no rows"):
        build_dataset(_cfg("kuaisar", folder))


def write_douban(path: Path, rows: list[str], header: str = "domain,user_id,item_id,label") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_douban(tmp_path):
    rows = [
        f"{d},u{u},{i},{(u + i) % 2}"
        for d in ("book", "movie", "music")
        for u in range(20)
        for i in range(10)
    ]
    path = write_douban(tmp_path / "douban" / "douban.csv", rows)
    ds = build_dataset(_cfg("douban", path.parent, seed=3))
    assert ds.scenarios["name"].to_list() == ["Books", "Movies", "Music"]
    assert ds.interactions.height == 600 and ds.items.height == 30  # item ids namespaced per domain
    assert ds.items.filter(pl.col("item_id") == "movie_3")["title"][0] == "Movie 3"
    assert ds.manifest["source"]["split_strategy_used"] == "random"
    share = ds.interactions["split"].value_counts(normalize=True)
    assert dict(share.iter_rows())["test"] == pytest.approx(0.1, abs=0.05)
    again = build_dataset(_cfg("douban", path, seed=3))
    assert again.interactions.equals(ds.interactions)


def test_douban_bad_inputs(tmp_path):
    path = tmp_path / "d.csv"
    write_douban(path, ["book,u1,1,1", "film,u1,2,0"])
    with pytest.raises(
        DataError, match=r"d.csv: column 'domain' has value 'film', which is not a known scenario id"
    ):
        build_dataset(_cfg("douban", path))
    write_douban(path, ["book,u1,1,1", "book,u1,2,5"])
    with pytest.raises(DataError, match=r"d.csv: column 'label' has value 5 at data row 2, expected 0 or 1"):
        build_dataset(_cfg("douban", path))
    write_douban(path, ["book,u1,1,1", "book,u1,2,yes"])
    with pytest.raises(DataError, match=r"column 'label' has value 'yes' at data row 2, expected an integer"):
        build_dataset(_cfg("douban", path))
    write_douban(path, ["book,u1,1"], header="domain,user_id,item_id")
    with pytest.raises(DataError, match=r"d.csv: missing column 'label'"):
        build_dataset(_cfg("douban", path))
    write_douban(path, ["book,,1,1"])
    with pytest.raises(DataError, match=r"column 'user_id' is empty at data row 1"):
        build_dataset(_cfg("douban", path))
    path.write_text("")
    with pytest.raises(DataError, match="d.csv: file is empty"):
        build_dataset(_cfg("douban", path))


def test_cli_bad_data_writes_nothing(tmp_path, capsys):
    path = write_douban(tmp_path / "src" / "d.csv", ["book,u1,1,1", "book,u1,2,7"])
    out = tmp_path / "out"
    assert main(["data", "build", "--dataset", "douban", "--path", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "d.csv" in err and "'label'" in err and "7" in err and "expected 0 or 1" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no output, no temp folder
