"""Model registry: exported, parity-checked models with their manifests, versioned like the offline store.

    ROOT/versions/<model_id>/   the exported model folder (model.onnx + manifest.json, contract 5)
                                plus registry.json (validation AUC, run dir, knowledge snapshot,
                                dataset version, why it was accepted, provenance)
    ROOT/CURRENT                the id serving should load (one line), replaced atomically
    ROOT/HISTORY                ids that were current, oldest first (rollback)

A version is copied into a temporary folder and renamed into `versions/` when complete; only
then is CURRENT switched. The promotion rule (`decide`) refuses a candidate whose validation AUC
is lower than the current model's by more than `max_auc_regression`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llm4msr.atomic import atomic_directory, write_json_atomic
from llm4msr.errors import UserError
from llm4msr.versioned import VersionedFolders

log = logging.getLogger(__name__)

REGISTRY_FILE = "registry.json"


class RegistryError(UserError, ValueError):
    """The registry folder or a candidate model is not what the registry expects."""


@dataclass
class Decision:
    """Whether a candidate may be registered, and why (logged and returned by the train flow)."""

    accept: bool
    reason: str
    candidate_auc: float | None
    current_auc: float | None
    current_id: str | None
    max_auc_regression: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    candidate_auc: float | None, current_auc: float | None, current_id: str | None, max_auc_regression: float
) -> Decision:
    """Promotion rule: accept unless the candidate is worse than the current model by > the margin."""
    if candidate_auc is None or candidate_auc != candidate_auc:  # missing or NaN
        return Decision(
            False,
            "candidate has no validation AUC",
            candidate_auc,
            current_auc,
            current_id,
            max_auc_regression,
        )
    if current_id is None or current_auc is None:
        return Decision(
            True,
            "no current model: first registration",
            candidate_auc,
            current_auc,
            current_id,
            max_auc_regression,
        )
    drop = current_auc - candidate_auc
    if drop > max_auc_regression:
        return Decision(
            False,
            f"validation AUC {candidate_auc:.4f} is {drop:.4f} below the current model {current_id} "
            f"({current_auc:.4f}); the allowed regression is {max_auc_regression:.4f}",
            candidate_auc,
            current_auc,
            current_id,
            max_auc_regression,
        )
    return Decision(
        True,
        f"validation AUC {candidate_auc:.4f} vs current {current_id} {current_auc:.4f} "
        f"(change {-drop:+.4f}, allowed regression {max_auc_regression:.4f})",
        candidate_auc,
        current_auc,
        current_id,
        max_auc_regression,
    )


def new_model_id() -> str:
    return dt.datetime.now(dt.UTC).strftime("m%Y%m%dT%H%M%S%fZ")


class ModelRegistry(VersionedFolders):
    """Registered models: versions/<id>/ + CURRENT + HISTORY (see llm4msr.versioned)."""

    kind = "model registry"
    marker = REGISTRY_FILE
    error = RegistryError

    def current_path(self) -> Path | None:
        cid = self.current_id()
        return self.path_of(cid) if cid else None

    def entry(self, model_id: str) -> dict[str, Any]:
        return json.loads((self.path_of(model_id) / REGISTRY_FILE).read_text())

    def current_entry(self) -> dict[str, Any] | None:
        cid = self.current_id()
        return self.entry(cid) if cid else None

    def register(
        self,
        export_dir: str | Path,
        entry: dict[str, Any],
        model_id: str | None = None,
        make_current: bool = True,
    ) -> str:
        """Copy `export_dir` into versions/<id>/ with `entry` as registry.json; then switch CURRENT."""
        export_dir = Path(export_dir)
        if not (export_dir / "manifest.json").is_file():
            raise RegistryError(f"{export_dir} is not an exported model folder (no manifest.json)")
        mid = model_id or new_model_id()
        final = self.dir_of(mid)  # checks the id: it becomes a folder name
        if (final / REGISTRY_FILE).is_file():  # idempotent re-run of the same registration
            log.info("model registry %s: %s already registered", self.root, mid)
        else:
            with atomic_directory(final, overwrite=final.exists()) as tmp:
                shutil.copytree(export_dir, tmp, dirs_exist_ok=True)
                write_json_atomic(tmp / REGISTRY_FILE, {**entry, "model_id": mid})
        if make_current:
            self.set_current(mid)
        return mid
