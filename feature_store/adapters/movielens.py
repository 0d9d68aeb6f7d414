"""MovieLens: ML-100K (GroupLens `u.*` or RecBole atomic `*.inter/.item/.user`) and ML-1M (`*.dat`).

The layout is detected from the files present. Scenarios are user age groups
(`movielens.age_bins`, e.g. <25 / 25-34 / 35+, the Scenario-Wise Rec recipe) or, with
`scenario_by: genre`, the movie's first listed genre. Label = rating >= `label_threshold`.
Items carry the title, the genres as categories and a one-line description for prompts.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import polars as pl

from feature_store.adapters import RawData, require_path
from feature_store.adapters.common import (
    check_no_nulls,
    check_unique,
    read_delimited,
    require_columns,
    to_int,
)
from feature_store.dataset import DataError
from llm4msr.config import DataConfig
from llm4msr.errors import MissingInputError

log = logging.getLogger(__name__)

# GroupLens ML-100K genre flags, in u.item column order (also in u.genre).
GENRES_100K = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]
# ML-1M occupation codes (users.dat); ML-100K uses the names directly.
OCCUPATIONS_1M = [
    "other",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
]
# Attribute age groups (ML-1M's own coding, applied to exact ages too).
AGE_GROUP_EDGES = [
    (18, "under 18"),
    (25, "18-24"),
    (35, "25-34"),
    (45, "35-44"),
    (50, "45-49"),
    (56, "50-55"),
]


def detect_layout(path: Path) -> str:
    """'grouplens' (u.data), 'recbole' (*.inter) or 'ml1m' (ratings.dat); DataError otherwise."""
    if path.is_file():
        path = path.parent
    if (path / "u.data").is_file():
        return "grouplens"
    if (path / "ratings.dat").is_file():
        return "ml1m"
    if list(path.glob("*.inter")):
        return "recbole"
    raise DataError(
        f"{path}: no MovieLens files found: expected u.data + u.item + u.user (GroupLens ML-100K), "
        "*.inter + *.item + *.user (RecBole atomic) or ratings.dat + movies.dat + users.dat (ML-1M)"
    )


def matches(path: Path) -> bool:
    """True when `path` holds one of the MovieLens layouts (for `data build --path` without --dataset)."""
    try:
        detect_layout(path)
    except DataError:
        return False
    return True


def _recbole_file(folder: Path, ext: str) -> Path:
    found = sorted(folder.glob(f"*.{ext}"))
    if not found:
        raise MissingInputError(
            f"{folder}: no *.{ext} file (RecBole atomic layout needs .inter, .item and .user)"
        )
    return found[0]


def _read_recbole(path: Path) -> pl.DataFrame:
    df = read_delimited(path, "\t")
    return df.rename({c: c.split(":", 1)[0] for c in df.columns})


def _age_group(age: pl.Expr) -> pl.Expr:
    expr = pl.when(age < AGE_GROUP_EDGES[0][0]).then(pl.lit(AGE_GROUP_EDGES[0][1]))
    for edge, name in AGE_GROUP_EDGES[1:]:
        expr = expr.when(age < edge).then(pl.lit(name))
    return expr.otherwise(pl.lit("56+"))


def _age_scenarios(bins: list[int]) -> list[tuple[str, str, int, int | None]]:
    """(scenario_id, name, low, high) per age bin; the last bin is open-ended."""
    edges = sorted(bins)
    out, low = [], 0
    for high in edges:
        name = f"<{high}" if low == 0 else f"{low}-{high - 1}"
        out.append((f"age_{low}_{high - 1}", name, low, high))
        low = high
    out.append((f"age_{low}_plus", f"{low}+", low, None))
    return out


def _load_raw(path: Path, layout: str) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, dict[str, Path]]:
    """ratings (user_id, item_id, rating, timestamp), users (user_id, age, gender, occupation, zip_code),
    items (item_id, title, year, genres list), all validated; plus the file paths used."""
    folder = path if path.is_dir() else path.parent
    if layout == "grouplens":
        files = {"ratings": folder / "u.data", "items": folder / "u.item", "users": folder / "u.user"}
        ratings = read_delimited(files["ratings"], "\t", ["user_id", "item_id", "rating", "timestamp"])
        raw_items = read_delimited(
            files["items"], "|", ["item_id", "title", "release_date", "video_date", "url", *GENRES_100K]
        )
        users = read_delimited(files["users"], "|", ["user_id", "age", "gender", "occupation", "zip_code"])
        flags = [pl.when(pl.col(g) == "1").then(pl.lit(g)).alias(f"_g{k}") for k, g in enumerate(GENRES_100K)]
        items = raw_items.select(
            "item_id",
            title=pl.col("title").str.replace(r"\s*\(\d{4}\)\s*$", ""),
            year=pl.col("release_date").str.extract(r"(\d{4})$"),
            genres=pl.concat_list(flags).list.drop_nulls(),
        )
    elif layout == "recbole":
        files = {
            "ratings": _recbole_file(folder, "inter"),
            "items": _recbole_file(folder, "item"),
            "users": _recbole_file(folder, "user"),
        }
        ratings = _read_recbole(files["ratings"])
        require_columns(ratings, files["ratings"], ["user_id", "item_id", "rating", "timestamp"])
        raw_items = _read_recbole(files["items"])
        require_columns(raw_items, files["items"], ["item_id", "movie_title", "class"])
        items = raw_items.select(
            "item_id",
            title=pl.col("movie_title"),
            year=pl.col("release_year") if "release_year" in raw_items.columns else pl.lit(None, pl.String),
            genres=pl.col("class")
            .fill_null("")
            .str.split(" ")
            .list.eval(pl.element().filter(pl.element() != "")),
        )
        users = _read_recbole(files["users"])
        require_columns(users, files["users"], ["user_id", "age", "gender", "occupation"])
        if "zip_code" not in users.columns:
            users = users.with_columns(zip_code=pl.lit(None, pl.String))
    else:
        files = {
            "ratings": folder / "ratings.dat",
            "items": folder / "movies.dat",
            "users": folder / "users.dat",
        }
        ratings = read_delimited(files["ratings"], "::", ["user_id", "item_id", "rating", "timestamp"])
        raw_items = read_delimited(files["items"], "::", ["item_id", "title", "genres"])
        users = read_delimited(files["users"], "::", ["user_id", "gender", "age", "occupation", "zip_code"])
        items = raw_items.select(
            "item_id",
            title=pl.col("title").str.replace(r"\s*\(\d{4}\)\s*$", ""),
            year=pl.col("title").str.extract(r"\((\d{4})\)\s*$"),
            genres=pl.col("genres").str.split("|"),
        )
        occ = to_int(users, files["users"], "occupation")
        bad = occ.filter((pl.col("occupation") < 0) | (pl.col("occupation") >= len(OCCUPATIONS_1M)))
        if bad.height:
            raise DataError(
                f"{files['users']}: column 'occupation' has value {bad['occupation'][0]!r}, "
                f"expected a code 0-{len(OCCUPATIONS_1M) - 1}"
            )
        users = users.with_columns(occupation=pl.Series(OCCUPATIONS_1M).gather(occ["occupation"]))

    ratings = ratings.with_columns(pl.col(c).str.strip_chars() for c in ("user_id", "item_id"))
    check_no_nulls(ratings, files["ratings"], ["user_id", "item_id"])
    ratings = to_int(ratings, files["ratings"], "rating", allow_float=True)
    ratings = to_int(ratings, files["ratings"], "timestamp", allow_float=True)
    bad = ratings.filter((pl.col("rating") < 0) | (pl.col("rating") > 5))
    if bad.height:
        raise DataError(f"{files['ratings']}: column 'rating' has value {bad['rating'][0]!r}, expected 0-5")
    users = to_int(users, files["users"], "age")
    for df, key, which in ((users, "user_id", "users"), (items, "item_id", "items")):
        check_no_nulls(df, files[which], [key])
        check_unique(df, files[which], key)
    for col, table, which in (("user_id", users, "users"), ("item_id", items, "items")):
        unknown = ratings.filter(~pl.col(col).is_in(table[col].implode()))
        if unknown.height:
            raise DataError(
                f"{files['ratings']}: column {col!r} has value {unknown[col][0]!r} that is not in "
                f"{files[which]}"
            )
    return ratings, users, items, files


def _first_users(ratings: pl.DataFrame, users: pl.DataFrame, n: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The first `n` users in id order (numeric when every id is an integer) and their ratings:
    a deterministic subset that any machine reproduces from the same files."""
    ids = users["user_id"].to_list()
    numeric = all(i.strip().isdigit() for i in ids)
    keep = sorted(ids, key=lambda i: (int(i), i) if numeric else (0, i))[:n]
    log.info("movielens: keeping the first %d of %d users (movielens.max_users)", len(keep), len(ids))
    return (
        ratings.filter(pl.col("user_id").is_in(keep)),
        users.filter(pl.col("user_id").is_in(keep)),
    )


def load(cfg: DataConfig) -> RawData:
    """Read a MovieLens folder (any supported layout) into canonical tables."""
    path = require_path(cfg, "movielens")
    layout = detect_layout(path)
    ml = cfg.movielens
    ratings, users, items, files = _load_raw(path, layout)
    if ml.max_users is not None:
        ratings, users = _first_users(ratings, users, ml.max_users)
    log.info("movielens (%s layout): %s ratings from %s", layout, f"{ratings.height:,}", files["ratings"])

    items = items.with_columns(
        genres=pl.when(pl.col("genres").list.len() > 0)
        .then(pl.col("genres"))
        .otherwise(pl.lit(["unknown"], dtype=pl.List(pl.String)))
    )
    genre_text = pl.col("genres").list.join(", ")
    year_text = (
        pl.when(pl.col("year").is_not_null())
        .then(pl.lit(" (") + pl.col("year") + pl.lit(")"))
        .otherwise(pl.lit(""))
    )
    items = items.select(
        "item_id",
        title=pl.col("title").fill_null("").str.strip_chars(),
        categories=pl.col("genres"),
        description=pl.lit("Movie") + year_text + pl.lit("; genres: ") + genre_text + pl.lit("."),
        item_category=pl.col("genres").list.first(),
        release_decade=pl.when(pl.col("year").is_not_null())
        .then(pl.col("year").str.slice(0, 3) + pl.lit("0s"))
        .otherwise(pl.lit(None, pl.String)),
    )
    users = users.select(
        "user_id",
        age_group=_age_group(pl.col("age")),
        gender=pl.col("gender"),
        occupation=pl.col("occupation"),
        zip_prefix=pl.col("zip_code").str.slice(0, 1),
        _age=pl.col("age"),
    )

    inter = ratings.select(
        "user_id",
        "item_id",
        label=(pl.col("rating") >= ml.label_threshold).cast(pl.Int8),
        timestamp=pl.col("timestamp"),
    )
    if ml.scenario_by == "age":
        bins = _age_scenarios(ml.age_bins)
        expr = None
        for sid, _, low, high in bins:
            cond = (
                pl.col("_age") >= low if high is None else (pl.col("_age") >= low) & (pl.col("_age") < high)
            )
            expr = pl.when(cond).then(pl.lit(sid)) if expr is None else expr.when(cond).then(pl.lit(sid))
        user_scen = users.select("user_id", scenario_id=expr.otherwise(pl.lit(bins[-1][0])))
        inter = inter.join(user_scen, on="user_id", how="left")
        scenarios = pl.DataFrame(
            {
                "scenario_id": [b[0] for b in bins],
                "name": [f"Age {b[1]}" for b in bins],
                "description": [f"Movie ratings by users aged {b[1]}." for b in bins],
            }
        )
    else:

        def genre_id(g: str) -> str:
            return re.sub(r"[^a-z0-9]+", "_", g.lower()).strip("_")

        item_scen = items.select("item_id", genre=pl.col("item_category"))
        genres = sorted(item_scen["genre"].unique().to_list())
        ids = {g: genre_id(g) for g in genres}
        inter = (
            inter.join(item_scen, on="item_id", how="left")
            .with_columns(scenario_id=pl.col("genre").replace_strict(ids, return_dtype=pl.String))
            .drop("genre")
        )
        scenarios = pl.DataFrame(
            {
                "scenario_id": [ids[g] for g in genres],
                "name": genres,
                "description": [f"Ratings of movies whose first listed genre is {g}." for g in genres],
            }
        )
    present = set(inter["scenario_id"].unique().to_list())
    scenarios = scenarios.filter(pl.col("scenario_id").is_in(list(present)))
    inter = inter.select("user_id", "item_id", "scenario_id", "label", "timestamp")
    return RawData(
        interactions=inter,
        users=users.drop("_age"),
        items=items,
        scenarios=scenarios,
        has_timestamps=True,
        params={
            "dataset": "movielens",
            "layout": layout,
            "files": {k: str(v) for k, v in files.items()},
            **ml.model_dump(),
        },
    )
