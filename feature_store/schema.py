"""The canonical tables: the contract between data adapters and everything downstream.

A built dataset is a folder:

    interactions.parquet  user_id, item_id, scenario_id (str), label (int8, 0/1),
                          timestamp (int64, unix seconds or a per-user order), split (train|valid|test)
    users.parquet         user_id (str), train_cutoff (int64, last training timestamp; null if none),
                          then attribute columns (str) such as age_group, gender, occupation
    items.parquet         item_id (str), title (str), categories (list[str]), description (str|null),
                          then attribute columns
    scenarios.parquet     scenario_id (str), name (str), description (str)
    vocabs.json           id -> index maps fit on the training split; index 0 = unknown
    manifest.json         source, parameters, row counts, sha256 per file, schema version, provenance
    summary.json          rows / users / items / positives per scenario

User-level prompts may only use interactions with split == "train" (equivalently timestamp <=
train_cutoff for that user); `valid`/`test` rows are what the model is evaluated on.
"""

from __future__ import annotations

import polars as pl

SCHEMA_VERSION = 1

SPLITS = ("train", "valid", "test")

INTERACTIONS_FILE = "interactions.parquet"
USERS_FILE = "users.parquet"
ITEMS_FILE = "items.parquet"
SCENARIOS_FILE = "scenarios.parquet"
VOCABS_FILE = "vocabs.json"
MANIFEST_FILE = "manifest.json"
SUMMARY_FILE = "summary.json"

# Required columns and their exact dtypes. Extra columns are allowed in users/items (attributes).
INTERACTIONS_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "item_id": pl.String(),
    "scenario_id": pl.String(),
    "label": pl.Int8(),
    "timestamp": pl.Int64(),
    "split": pl.String(),
}
USERS_SCHEMA: dict[str, pl.DataType] = {"user_id": pl.String(), "train_cutoff": pl.Int64()}
ITEMS_SCHEMA: dict[str, pl.DataType] = {
    "item_id": pl.String(),
    "title": pl.String(),
    "categories": pl.List(pl.String()),
    "description": pl.String(),
}
SCENARIOS_SCHEMA: dict[str, pl.DataType] = {
    "scenario_id": pl.String(),
    "name": pl.String(),
    "description": pl.String(),
}

TABLES: dict[str, tuple[str, dict[str, pl.DataType]]] = {
    "interactions": (INTERACTIONS_FILE, INTERACTIONS_SCHEMA),
    "users": (USERS_FILE, USERS_SCHEMA),
    "items": (ITEMS_FILE, ITEMS_SCHEMA),
    "scenarios": (SCENARIOS_FILE, SCENARIOS_SCHEMA),
}

# Features the ranker may use from the users/items tables besides the ids (attribute columns).
KEY_COLUMNS = {
    "interactions": ("user_id", "item_id", "scenario_id"),
    "users": ("user_id",),
    "items": ("item_id",),
    "scenarios": ("scenario_id",),
}
