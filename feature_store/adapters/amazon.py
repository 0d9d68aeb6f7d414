"""Amazon: the two-domain sequence layout (LLMCDSR food-kitchen) and the public reviews JSON-lines layout.

Both are implicit feedback: every listed purchase / review is a positive, and
`amazon.negatives_per_positive` negatives are sampled (seeded, uniformly) from the *same domain*,
avoiding the user's own positives. A positive and its negatives share a timestamp, so the
temporal split keeps them in one held-out window.

Sequence layout (`num.txt`, `item_set_{A,B}.json`, `text_{A,B}.json`, `train_A.txt`, `train_B.txt`,
`train_overlap.txt`, `valid.txt`, `test.txt`): item ids are global (id < n_A is a Grocery item,
otherwise Kitchen); user ids restart in each file, so users become `<file>_<id>`; the timestamp is
the position in the sequence. valid/test users' sequences are their history plus held-out items;
the per-user temporal split holds out their last events.

Reviews layout: one reviews file per domain (`<Domain>.jsonl`, `reviews_<Domain>_5.json`, optionally
`.gz`) with `reviewerID`/`user_id`, `asin`/`parent_asin`, `unixReviewTime`/`timestamp` (seconds or
milliseconds), and an optional `meta_<Domain>.jsonl` with `asin`/`parent_asin`, `title`,
`categories`/`category`/`main_category`, `description`. Scenario = domain.
"""

from __future__ import annotations

import ast
import gzip
import json
import logging
import re
from pathlib import Path

import numpy as np
import polars as pl

from feature_store.adapters import RawData, require_path
from feature_store.adapters.common import check_no_nulls, first_present, read_delimited
from feature_store.dataset import DataError
from llm4msr.config import DataConfig
from llm4msr.errors import MissingInputError

log = logging.getLogger(__name__)

SEQ_FILES = ("train_A", "train_B", "train_overlap", "valid", "test")
SEQ_DOMAINS = (
    (
        "grocery",
        "Grocery",
        "Amazon Grocery and Gourmet Food: pantry staples, snacks, drinks and cooking ingredients.",
    ),
    ("kitchen", "Kitchen", "Amazon Home and Kitchen: cookware, appliances, kitchen tools and home goods."),
)


# --------------------------------------------------------------------------- negatives
def add_negatives(pos: pl.DataFrame, domain_items: dict[str, np.ndarray], k: int, seed: int) -> pl.DataFrame:
    """Append k sampled negatives per positive row, same scenario and timestamp, not among the user's positives."""
    pos = pos.with_columns(label=pl.lit(1, pl.Int8))
    if k == 0:
        return pos
    rng = np.random.default_rng([seed, 201])
    parts = []
    for sid, pool in domain_items.items():
        rows = pos.filter(pl.col("scenario_id") == sid)
        if rows.height == 0:
            continue
        rep = rows.select("user_id", "scenario_id", "timestamp").select(pl.all().repeat_by(k).explode())
        draw = pool[rng.integers(0, len(pool), rep.height)]
        parts.append(rep.with_columns(item_id=pl.Series(draw, dtype=pl.String), label=pl.lit(0, pl.Int8)))
    neg = pl.concat(parts) if parts else pos.clear()
    owned = pos.select("user_id", "item_id").unique()
    clash = neg.join(owned, on=["user_id", "item_id"], how="semi")
    for _ in range(5):  # redraw collisions with the user's own positives
        if clash.height == 0:
            break
        neg = neg.join(owned, on=["user_id", "item_id"], how="anti")
        redraw = []
        for sid, pool in domain_items.items():
            c = clash.filter(pl.col("scenario_id") == sid)
            if c.height:
                redraw.append(
                    c.with_columns(
                        item_id=pl.Series(pool[rng.integers(0, len(pool), c.height)], dtype=pl.String)
                    )
                )
        clash = pl.concat(redraw)
        neg = pl.concat([neg, clash.join(owned, on=["user_id", "item_id"], how="anti")])
        clash = clash.join(owned, on=["user_id", "item_id"], how="semi")
    cols = ["user_id", "item_id", "scenario_id", "label", "timestamp"]
    return pl.concat([pos.select(cols), neg.select(cols)])


# --------------------------------------------------------------------------- sequence layout
def _read_json_map(path: Path) -> dict:
    if not path.is_file():
        raise MissingInputError(f"{path} does not exist (Amazon sequence layout)")
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(obj, dict) or not obj:
        raise DataError(f"{path}: expected a non-empty JSON object (product id -> value)")
    return obj


def _load_sequences(folder: Path, cfg: DataConfig) -> RawData:
    num_path = folder / "num.txt"
    nums = [line.strip() for line in num_path.read_text().splitlines() if line.strip()]
    if len(nums) != 2 or not all(n.isdigit() for n in nums):
        raise DataError(
            f"{num_path}: expected two item counts (domain A, domain B), one per line; got {nums}"
        )
    n_a, n_b = int(nums[0]), int(nums[1])
    asins: list[np.ndarray] = []
    titles: dict[str, str] = {}
    for tag, n in (("A", n_a), ("B", n_b)):
        item_set = _read_json_map(folder / f"item_set_{tag}.json")
        local = np.empty(n, dtype=object)
        seen = np.zeros(n, dtype=bool)
        for asin, idx in item_set.items():
            if not isinstance(idx, int) or not 0 <= idx < n:
                raise DataError(
                    f"{folder / f'item_set_{tag}.json'}: product {asin!r} has index {idx!r}, "
                    f"expected an integer in 0..{n - 1} (num.txt)"
                )
            local[idx], seen[idx] = asin, True
        if not seen.all():
            raise DataError(
                f"{folder / f'item_set_{tag}.json'}: index {int(np.argmin(seen))} has no product "
                f"(expected {n} products, num.txt)"
            )
        asins.append(local)
        titles.update(_read_json_map(folder / f"text_{tag}.json"))
    global_asin = np.concatenate(asins)

    seqs = []
    for stem in SEQ_FILES:
        path = folder / f"{stem}.txt"
        if not path.is_file():
            raise MissingInputError(
                f"{path} does not exist (Amazon sequence layout needs {', '.join(SEQ_FILES)})"
            )
        df = read_delimited(path, "\t", ["user", "items"]).with_row_index("line", offset=1)
        check_no_nulls(df, path, ["user", "items"])
        df = df.with_columns(item=pl.col("items").str.split(",")).drop("items").explode("item")
        df = df.with_columns(pl.col("item").str.strip_chars()).filter(pl.col("item") != "")
        ids = df["item"].cast(pl.Int64, strict=False)
        bad = ids.is_null() | (ids < 0) | (ids >= n_a + n_b)
        if bad.any():
            i = int(bad.arg_max())
            raise DataError(
                f"{path}: line {df['line'][i]}: item id {df['item'][i]!r} is not an integer in "
                f"0..{n_a + n_b - 1} (num.txt: {n_a} + {n_b} items)"
            )
        df = df.with_columns(gid=ids, user_id=pl.lit(f"{stem}_") + pl.col("user").str.strip_chars())
        df = df.with_columns(timestamp=pl.int_range(pl.len(), dtype=pl.Int64).over("user_id"))
        seqs.append(df.select("user_id", "gid", "timestamp"))
    pos = pl.concat(seqs)
    dup = pos.group_by("user_id", "timestamp").len().filter(pl.col("len") > 1)
    if dup.height:
        raise DataError(
            f"{folder}: user {dup['user_id'][0]!r} appears on more than one line of its sequence file"
        )
    gid = pos["gid"].to_numpy()
    pos = pos.with_columns(
        item_id=pl.Series(global_asin[gid], dtype=pl.String),
        scenario_id=pl.Series(np.where(gid < n_a, SEQ_DOMAINS[0][0], SEQ_DOMAINS[1][0]), dtype=pl.String),
    ).drop("gid")
    domain_items = {SEQ_DOMAINS[0][0]: asins[0].astype(str), SEQ_DOMAINS[1][0]: asins[1].astype(str)}
    inter = add_negatives(pos, domain_items, cfg.amazon.negatives_per_positive, cfg.seed)

    domain_of = np.where(np.arange(n_a + n_b) < n_a, SEQ_DOMAINS[0][1], SEQ_DOMAINS[1][1])
    missing = [a for a in global_asin if a not in titles]
    if missing:
        log.warning(
            "amazon: %d products have no title in text_*.json; their id is used as the title", len(missing)
        )
    item_titles = [str(titles.get(a) or a) for a in global_asin]
    items = pl.DataFrame(
        {
            "item_id": global_asin.astype(str),
            "title": item_titles,
            "categories": [[d] for d in domain_of],
            "description": [f"{d} product: {t}" for d, t in zip(domain_of, item_titles, strict=True)],
        },
        schema={
            "item_id": pl.String,
            "title": pl.String,
            "categories": pl.List(pl.String),
            "description": pl.String,
        },
    )
    users = inter.select(pl.col("user_id").unique(maintain_order=True)).with_columns(
        user_group=pl.col("user_id").str.replace(r"_\d+$", "")
    )
    scenarios = pl.DataFrame(
        {
            "scenario_id": [d[0] for d in SEQ_DOMAINS],
            "name": [d[1] for d in SEQ_DOMAINS],
            "description": [d[2] for d in SEQ_DOMAINS],
        }
    )
    return RawData(
        interactions=inter,
        users=users.drop("user_group"),
        items=items,
        scenarios=scenarios,
        has_timestamps=True,
        params={
            "dataset": "amazon",
            "layout": "sequences",
            "items_per_domain": [n_a, n_b],
            **cfg.amazon.model_dump(),
        },
    )


# --------------------------------------------------------------------------- reviews JSON-lines layout
JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")


def _strip_suffix(name: str) -> str | None:
    for suf in JSON_SUFFIXES:
        if name.endswith(suf):
            return name[: -len(suf)]
    return None


def _read_json_lines(path: Path) -> pl.DataFrame:
    """JSON lines (strict JSON, or the Python-literal lines of the 2014 metadata dumps)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    records = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                try:
                    rec = ast.literal_eval(line)
                except (ValueError, SyntaxError) as exc:
                    raise DataError(f"{path}: line {lineno} is not a JSON object: {line[:80]!r}") from exc
            if not isinstance(rec, dict):
                raise DataError(f"{path}: line {lineno}: expected a JSON object, got {type(rec).__name__}")
            records.append(rec)
    if not records:
        raise DataError(f"{path}: file is empty")
    return pl.from_dicts(records, infer_schema_length=None)


def _domain_name(stem: str) -> tuple[str, str]:
    stem = re.sub(r"^reviews_", "", stem)
    stem = re.sub(r"_5$", "", stem)
    sid = re.sub(r"[^a-z0-9]+", "_", stem.lower()).strip("_")
    return sid, stem.replace("_", " ")


def _flatten_categories(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    out: list[str] = []
    for v in value:  # type: ignore[union-attr]
        out.extend(_flatten_categories(v))
    return list(dict.fromkeys(out))


def _load_reviews(folder: Path, cfg: DataConfig) -> RawData:
    review_files, meta_files = {}, {}
    for p in sorted(folder.iterdir()):
        stem = _strip_suffix(p.name)
        if stem is None:
            continue
        if stem.startswith("meta_"):
            meta_files[_domain_name(stem[5:])[0]] = p
        else:
            review_files[_domain_name(stem)] = p
    if not review_files:
        raise DataError(
            f"{folder}: no Amazon files found: expected the sequence layout (num.txt, train_*.txt, ...) "
            "or reviews JSON lines (<Domain>.jsonl with meta_<Domain>.jsonl)"
        )
    parts, metas, scen_rows = [], [], []
    for (sid, name), path in review_files.items():
        df = _read_json_lines(path)
        ucol = first_present(df, path, ["reviewerID", "user_id"])
        icol = first_present(df, path, ["asin", "parent_asin"])
        tcol = first_present(df, path, ["unixReviewTime", "timestamp"])
        df = df.select(
            user_id=pl.col(ucol).cast(pl.String), item_id=pl.col(icol).cast(pl.String), timestamp=pl.col(tcol)
        )
        check_no_nulls(df, path, ["user_id", "item_id"])
        ts = df["timestamp"].cast(pl.Int64, strict=False)
        if ts.is_null().any():
            i = int(ts.is_null().arg_max())
            raise DataError(
                f"{path}: column {tcol!r} has value {df['timestamp'][i]!r} at line {i + 1}, "
                "expected unix time (integer)"
            )
        if ts.max() > 10**11:  # the 2023 dumps use milliseconds
            ts = ts // 1000
        parts.append(df.with_columns(timestamp=ts, scenario_id=pl.lit(sid)))
        scen_rows.append((sid, name, f"Amazon {name}: products reviewed in this category."))
        if sid in meta_files:
            m = _read_json_lines(meta_files[sid])
            mid = first_present(m, meta_files[sid], ["asin", "parent_asin"])
            ccol = next((c for c in ("categories", "category", "main_category") if c in m.columns), None)
            cats = [_flatten_categories(v) for v in (m[ccol].to_list() if ccol else [None] * m.height)]
            desc = m["description"].to_list() if "description" in m.columns else [None] * m.height
            metas.append(
                pl.DataFrame(
                    {
                        "item_id": m[mid].cast(pl.String),
                        "title": m["title"].cast(pl.String)
                        if "title" in m.columns
                        else pl.Series([None] * m.height, dtype=pl.String),
                        "categories": cats,
                        "description": [" ".join(_flatten_categories(d))[:300] or None for d in desc],
                        "domain": name,
                    },
                    schema={
                        "item_id": pl.String,
                        "title": pl.String,
                        "categories": pl.List(pl.String),
                        "description": pl.String,
                        "domain": pl.String,
                    },
                )
            )
    pos = pl.concat(parts).select("user_id", "item_id", "scenario_id", "timestamp")
    item_dom = pos.select("item_id", "scenario_id").unique()
    domain_items = {
        sid: item_dom.filter(pl.col("scenario_id") == sid)["item_id"].sort().to_numpy().astype(str)
        for sid, _, _ in scen_rows
    }
    inter = add_negatives(pos, domain_items, cfg.amazon.negatives_per_positive, cfg.seed)
    names = {sid: name for sid, name, _ in scen_rows}
    items = (
        item_dom.group_by("item_id")
        .agg(pl.col("scenario_id").first())
        .with_columns(domain=pl.col("scenario_id").replace_strict(names, return_dtype=pl.String))
        .drop("scenario_id")
    )
    meta = pl.concat(metas).unique("item_id", keep="first") if metas else None
    if meta is not None:
        items = items.join(meta.drop("domain"), on="item_id", how="left")
    else:
        items = items.with_columns(
            title=pl.lit(None, pl.String),
            categories=pl.lit(None, pl.List(pl.String)),
            description=pl.lit(None, pl.String),
        )
    n_untitled = items["title"].null_count()
    if n_untitled:
        log.warning(
            "amazon: %d reviewed products have no title in the metadata; their id is used", n_untitled
        )
    items = (
        items.with_columns(
            title=pl.col("title").fill_null(pl.col("item_id")),
            categories=pl.when(pl.col("categories").list.len() > 0)
            .then(pl.col("categories"))
            .otherwise(pl.concat_list(pl.col("domain"))),
        )
        .with_columns(
            item_category=pl.when(pl.col("categories").list.len() > 1)
            .then(pl.col("categories").list.get(1))
            .otherwise(pl.col("categories").list.first()),
            description=pl.col("description").fill_null(pl.col("domain") + pl.lit(" product.")),
        )
        .select("item_id", "title", "categories", "description", "item_category")
        .sort("item_id")
    )
    users = inter.select(pl.col("user_id").unique()).sort("user_id")
    scenarios = pl.DataFrame(
        {
            "scenario_id": [r[0] for r in scen_rows],
            "name": [r[1] for r in scen_rows],
            "description": [r[2] for r in scen_rows],
        }
    )
    return RawData(
        interactions=inter,
        users=users,
        items=items,
        scenarios=scenarios,
        has_timestamps=True,
        params={
            "dataset": "amazon",
            "layout": "reviews",
            "files": sorted(str(p) for p in [*review_files.values(), *meta_files.values()]),
            **cfg.amazon.model_dump(),
        },
    )


def matches(path: Path) -> bool:
    """True when `path` holds the sequence layout (num.txt) or review JSON lines (for `data build
    --path` without --dataset)."""
    folder = path if path.is_dir() else path.parent
    if (folder / "num.txt").is_file():
        return True
    return any(
        (stem := _strip_suffix(p.name)) is not None and not stem.startswith("meta_") for p in folder.iterdir()
    )


def load(cfg: DataConfig) -> RawData:
    """Read an Amazon folder in the sequence or the reviews JSON-lines layout (detected from its files)."""
    path = require_path(cfg, "amazon")
    folder = path if path.is_dir() else path.parent
    if (folder / "num.txt").is_file():
        return _load_sequences(folder, cfg)
    return _load_reviews(folder, cfg)
