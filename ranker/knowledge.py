"""Knowledge lookups for training and evaluation: per-row user / scenario vector indices.

A snapshot is given either as a snapshot folder or as an OfflineStore root (its CURRENT
version is used). Vectors are kept once per entity; rows carry an index into the tables
(row 0 of the user table is the all-zero "no knowledge" vector).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from feature_store.knowledge_snapshot import MANIFEST_FILE, Snapshot, SnapshotError, load_snapshot
from feature_store.offline_store import OfflineStore

log = logging.getLogger(__name__)


def resolve_snapshot(path: str | Path) -> Path:
    """A snapshot folder, or an offline-store root -> the folder of its current snapshot."""
    path = Path(path)
    if (path / MANIFEST_FILE).is_file():
        return path
    store = OfflineStore(path)
    current = store.current_path()
    if current is None:
        raise SnapshotError(
            f"{path} is neither a knowledge snapshot folder (no {MANIFEST_FILE}) nor an offline store with a "
            "CURRENT version; build one with `llm4msr knowledge build`"
        )
    return current


@dataclass
class KnowledgeTables:
    snapshot_id: str
    family: str
    dimension: int
    path: str
    user_index: dict[str, int]  # user_id -> row in user_vectors (>= 1)
    user_vectors: np.ndarray  # [n_users + 1, K], row 0 = zeros
    scenario_index: dict[str, int]
    scenario_vectors: np.ndarray  # [n_scenarios, K]
    manifest: dict[str, Any] = field(default_factory=dict)  # the snapshot's manifest.json

    def lookup(self, frame: pl.DataFrame, source: str = "data") -> tuple[np.ndarray, np.ndarray]:
        """(user row index [N] (0 = none), scenario row index [N]) for rows with user_id, scenario_id."""
        uidx = (
            frame["user_id"]
            .replace_strict(
                list(self.user_index), list(self.user_index.values()), default=0, return_dtype=pl.Int64
            )
            .to_numpy()
        )
        scen = frame["scenario_id"].unique().to_list()
        missing = sorted(set(scen) - set(self.scenario_index))
        if missing:
            raise SnapshotError(
                f"{source}: column 'scenario_id' has scenario(s) {missing} with no vector in knowledge snapshot "
                f"{self.snapshot_id} ({self.path}); expected one of {sorted(self.scenario_index)}"
            )
        sidx = (
            frame["scenario_id"]
            .replace_strict(
                list(self.scenario_index), list(self.scenario_index.values()), return_dtype=pl.Int64
            )
            .to_numpy()
        )
        return uidx, sidx


def load_knowledge(path: str | Path, expected_dim: int | None = None) -> KnowledgeTables:
    """Load a snapshot's vectors; a dimension other than `expected_dim` is a clear error."""
    folder = resolve_snapshot(path)
    snap: Snapshot = load_snapshot(folder)
    if expected_dim is not None and snap.dimension != expected_dim:
        raise SnapshotError(
            f"knowledge snapshot {folder}: dimension {snap.dimension}, but the model/config expects {expected_dim} "
            "(train.knowledge_dim); use a snapshot of the same knowledge family or retrain"
        )
    uids, uvec = snap.vectors_of("user")
    sids, svec = snap.vectors_of("scenario")
    if not sids:
        raise SnapshotError(f"knowledge snapshot {folder} has no scenario vectors")
    k = snap.dimension
    user_vectors = np.zeros((len(uids) + 1, k), dtype=np.float32)
    if uids:
        user_vectors[1:] = uvec
    return KnowledgeTables(
        snapshot_id=snap.snapshot_id,
        family=str(snap.manifest.get("knowledge_family", "unknown")),
        dimension=k,
        path=str(folder),
        user_index={u: i + 1 for i, u in enumerate(uids)},
        user_vectors=user_vectors,
        scenario_index={s: i for i, s in enumerate(sids)},
        scenario_vectors=np.ascontiguousarray(svec, dtype=np.float32),
        manifest=snap.manifest,
    )
