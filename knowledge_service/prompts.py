"""Scenario- and user-level prompts rendered from versioned Jinja templates.

Templates live in `knowledge_service/templates/<name>.j2` (or `knowledge.template_dir`); the
file stem is the template version (`scenario_v1`, `user_v1`) and the sha256 of the file text is
recorded in the snapshot manifest. Each rendered prompt carries the sha256 of its text, which is
what incremental builds compare.

Length rule (user prompts): per scenario only the `max_history_per_scenario` most recent training
interactions are listed; if the rendered prompt is still longer than the token budget
(min(max_prompt_tokens, the model's limit), counted with the model's tokenizer including special
tokens), the oldest entries over all scenarios are dropped first until it fits. A prompt that does
not fit with every history entry dropped (or a scenario prompt over the budget) is an error
(`PromptTooLongError`); prompts are never silently truncated.

No-history rule: a user without any training interaction gets no prompt and no vector; the
ranker uses its learned fallback for them (`user_has_knowledge = 0`).

Leakage rule: only rows with split == "train" and timestamp <= the user's train_cutoff are used.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import jinja2
import polars as pl

from feature_store.dataset import CanonicalDataset
from knowledge_service.models import KnowledgeError, PromptTooLongError
from llm4msr.atomic import sha256_text

log = logging.getLogger(__name__)

Frame = TypeVar("Frame", pl.DataFrame, pl.LazyFrame)
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
TOP_CATEGORIES = 5


@dataclass(frozen=True)
class Template:
    version: str  # file stem, e.g. "user_v1"
    sha256: str
    source: str

    def render(self, **context: Any) -> str:
        return _compile(self.source).render(**context).strip()


@functools.lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
    return env.from_string(source)


def load_template(name: str, template_dir: str | Path | None = None) -> Template:
    """Read `<template_dir>/<name>.j2`; errors name the file."""
    folder = Path(template_dir) if template_dir else TEMPLATE_DIR
    path = folder / f"{name}.j2"
    if not path.is_file():
        have = sorted(p.stem for p in folder.glob("*.j2")) if folder.is_dir() else []
        raise KnowledgeError(f"prompt template {path} does not exist (templates in {folder}: {have})")
    source = path.read_text(encoding="utf-8")
    try:
        jinja2.Environment().parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise KnowledgeError(f"prompt template {path}: line {exc.lineno}: {exc.message}") from exc
    return Template(version=name, sha256=sha256_text(source), source=source)


@dataclass
class Prompt:
    kind: str  # "scenario" | "user"
    entity_id: str
    text: str
    token_ids: list[int]
    template_version: str
    n_history: int = 0  # history entries kept (users)
    n_dropped: int = 0  # entries dropped by the token budget (users)
    prompt_hash: str = field(init=False)

    def __post_init__(self) -> None:
        self.prompt_hash = sha256_text(self.text)

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


def _tokenize(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    return tokenizer.encode_batch(list(texts))


def training_history(ds: CanonicalDataset) -> pl.DataFrame:
    """Training interactions only (split == train and timestamp <= the user's cutoff), with item text."""
    items = ds.items.select("item_id", "title", "categories")
    return _before_cutoff(ds.interactions, ds.users).join(items, on="item_id", how="left")


def _before_cutoff(inter: Frame, users: Frame) -> Frame:
    """The rows prompts may describe: split == train and timestamp <= the user's train_cutoff."""
    inter = inter.filter(pl.col("split") == "train")
    inter = inter.join(users.select("user_id", "train_cutoff"), on="user_id", how="left")
    inter = inter.filter(pl.col("train_cutoff").is_null() | (pl.col("timestamp") <= pl.col("train_cutoff")))
    return inter.drop("train_cutoff")


def newest_per_scenario(hist: Frame, n: int) -> Frame:
    """The `n` most recent rows per (user, scenario): the history entries a user prompt lists.
    Ties are broken by item id (newest first) so the choice is deterministic."""
    return (
        hist.sort(["user_id", "scenario_id", "timestamp", "item_id"], descending=[False, False, True, True])
        .with_columns(rank=pl.int_range(pl.len()).over(["user_id", "scenario_id"]))
        .filter(pl.col("rank") < n)
    )


def described_rows(
    interactions: pl.LazyFrame, users: pl.DataFrame, max_history_per_scenario: int
) -> pl.LazyFrame:
    """Row numbers (column `row`, 0-based, in `interactions` order) of the rows that user prompts
    list with their label: the `max_history_per_scenario` newest training interactions of each
    (user, scenario) (`user_prompts`). Entries the token budget drops still count as listed, so
    the answer errs towards listed. The ranker keeps a row's label out of the knowledge it trains
    with on these rows (`train.meta.mask_described`). Lazy, so a distributed trainer can scan the
    interactions file instead of holding it."""
    inter = interactions.with_row_index("row")
    hist = _before_cutoff(inter, users.lazy())
    return newest_per_scenario(hist, max_history_per_scenario).select("row")


def scenario_prompts(ds: CanonicalDataset, template: Template, tokenizer: Any, budget: int) -> list[Prompt]:
    """One prompt per scenario with training statistics (train split only, so nothing leaks)."""
    hist = training_history(ds)
    names = dict(zip(ds.scenarios["scenario_id"].to_list(), ds.scenarios["name"].to_list(), strict=True))
    texts: list[tuple[str, str]] = []
    for row in ds.scenarios.sort("scenario_id").iter_rows(named=True):
        sid = row["scenario_id"]
        part = hist.filter(pl.col("scenario_id") == sid)
        cats = (
            part.select(pl.col("categories").explode().alias("c"))
            .drop_nulls()
            .group_by("c")
            .len()
            .sort(["len", "c"], descending=[True, False])
            .head(TOP_CATEGORIES)["c"]
            .to_list()
            if part.height
            else []
        )
        stats = {
            "n_users": part["user_id"].n_unique(),
            "n_items": part["item_id"].n_unique(),
            "n_interactions": part.height,
            "positive_rate": float(part["label"].cast(pl.Float64).mean()) if part.height else 0.0,
        }
        others = [names[o] for o in sorted(names) if o != sid]
        text = template.render(
            scenario={"id": sid, "name": row["name"], "description": row["description"] or ""},
            stats=stats,
            top_categories=cats,
            others=others,
        )
        texts.append((sid, text))
    ids = _tokenize(tokenizer, [t for _, t in texts])
    out = []
    for (sid, text), tok in zip(texts, ids, strict=True):
        if len(tok) > budget:
            raise PromptTooLongError(
                f"scenario {sid!r}: prompt has {len(tok)} tokens, over the budget of {budget} "
                f"(knowledge.max_prompt_tokens, capped by the model's limit); shorten the scenario description "
                f"or raise knowledge.max_prompt_tokens"
            )
        out.append(Prompt("scenario", sid, text, tok, template.version))
    return out


def _profile(row: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (k.replace("_", " "), str(v))
        for k, v in row.items()
        if k not in ("user_id", "train_cutoff") and v is not None and str(v) != ""
    ]


def user_prompts(
    ds: CanonicalDataset,
    template: Template,
    tokenizer: Any,
    budget: int,
    max_history_per_scenario: int,
    user_ids: set[str] | None = None,
) -> tuple[list[Prompt], list[str]]:
    """Prompts for users with training history (optionally only `user_ids`); also the ids without history."""
    hist = newest_per_scenario(training_history(ds), max_history_per_scenario)
    scen_names = dict(zip(ds.scenarios["scenario_id"].to_list(), ds.scenarios["name"].to_list(), strict=True))
    scen_order = {s: i for i, s in enumerate(sorted(scen_names))}
    per_user: dict[str, list[dict[str, Any]]] = {}
    for r in hist.select(
        "user_id", "scenario_id", "timestamp", "item_id", "title", "categories", "label"
    ).iter_rows(named=True):
        per_user.setdefault(r["user_id"], []).append(r)
    users = ds.users.sort("user_id")
    if user_ids is not None:
        users = users.filter(pl.col("user_id").is_in(sorted(user_ids)))
    no_history: list[str] = []
    rendered: list[tuple[str, list[dict[str, Any]], list[tuple[str, str]]]] = []
    for row in users.iter_rows(named=True):
        uid = row["user_id"]
        entries = per_user.get(uid)
        if not entries:
            no_history.append(uid)
            continue
        # oldest first over all scenarios: the order in which the budget drops entries
        entries.sort(key=lambda e: (e["timestamp"], scen_order[e["scenario_id"]], e["item_id"]))
        rendered.append((uid, entries, _profile(row)))

    def render(entries: list[dict[str, Any]], profile: list[tuple[str, str]]) -> str:
        by_scen: dict[str, list[dict[str, Any]]] = {}
        for e in entries:
            by_scen.setdefault(e["scenario_id"], []).append(
                {
                    "title": e["title"] or e["item_id"],
                    "categories": e["categories"] or [],
                    "liked": bool(e["label"]),
                }
            )
        scenarios = [
            {"name": scen_names[s], "entries": by_scen[s]} for s in sorted(by_scen, key=scen_order.get)
        ]
        return template.render(profile=profile, scenarios=scenarios)

    texts = [render(entries, profile) for _, entries, profile in rendered]
    ids = _tokenize(tokenizer, texts)
    out: list[Prompt] = []
    for (uid, entries, profile), text, tok in zip(rendered, texts, ids, strict=True):
        kept = len(entries)
        if len(tok) > budget:
            # largest k (newest k entries) that fits: binary search, each probe renders + tokenizes once
            lo, hi = 0, len(entries) - 1
            best: tuple[int, str, list[int]] | None = None
            while lo <= hi:
                mid = (lo + hi) // 2
                t = render(entries[len(entries) - mid :] if mid else [], profile)
                ti = _tokenize(tokenizer, [t])[0]
                if len(ti) <= budget:
                    best, lo = (mid, t, ti), mid + 1
                else:
                    hi = mid - 1
            if best is None:
                raise PromptTooLongError(
                    f"user {uid!r}: prompt does not fit the budget of {budget} tokens even without history "
                    f"(knowledge.max_prompt_tokens, capped by the model's limit); raise it or shorten the profile"
                )
            kept, text, tok = best
        out.append(
            Prompt("user", uid, text, tok, template.version, n_history=kept, n_dropped=len(entries) - kept)
        )
    return out, no_history
