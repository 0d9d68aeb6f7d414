"""Versioned offline store for knowledge snapshots (local folder; same layout on shared storage).

    ROOT/versions/<snapshot_id>/   immutable snapshot folders (see knowledge_snapshot)
    ROOT/CURRENT                   the current snapshot id (one line), replaced atomically
    ROOT/HISTORY                   ids that were current, oldest first (for rollback)

A version is written to a temporary folder and renamed into `versions/` only when complete,
then CURRENT is switched; readers therefore see the previous version or the new one, never a
partial one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from feature_store.knowledge_snapshot import SnapshotError, read_manifest
from llm4msr.atomic import atomic_directory, write_text_atomic

log = logging.getLogger(__name__)


def new_snapshot_id() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")


class OfflineStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.versions_dir = self.root / "versions"

    # ---- reading
    def list_versions(self) -> list[str]:
        if not self.versions_dir.is_dir():
            return []
        return sorted(p.name for p in self.versions_dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    def current_id(self) -> str | None:
        pointer = self.root / "CURRENT"
        if not pointer.is_file():
            return None
        return pointer.read_text().strip() or None

    def current_path(self) -> Path | None:
        cid = self.current_id()
        return self.versions_dir / cid if cid else None

    def path_of(self, snapshot_id: str) -> Path:
        path = self.versions_dir / snapshot_id
        if not path.is_dir():
            raise SnapshotError(f"snapshot {snapshot_id!r} not found under {self.versions_dir}")
        return path

    def history(self) -> list[str]:
        hist = self.root / "HISTORY"
        return [x for x in hist.read_text().split() if x] if hist.is_file() else []

    # ---- writing
    @contextlib.contextmanager
    def new_version(self, snapshot_id: str | None = None) -> Iterator[tuple[str, Path]]:
        """Yield (id, temp folder). On clean exit the folder becomes versions/<id> (not yet current)."""
        sid = snapshot_id or new_snapshot_id()
        with atomic_directory(self.versions_dir / sid) as tmp:
            yield sid, tmp
        read_manifest(self.versions_dir / sid)  # refuse to keep something that is not a snapshot

    def set_current(self, snapshot_id: str) -> None:
        read_manifest(self.path_of(snapshot_id))
        previous = self.current_id()
        if previous == snapshot_id:
            return
        hist = self.history()
        if previous:
            hist.append(previous)
        write_text_atomic(self.root / "HISTORY", "\n".join(hist) + ("\n" if hist else ""))
        write_text_atomic(self.root / "CURRENT", snapshot_id + "\n")
        log.info("offline store %s: current %s -> %s", self.root, previous, snapshot_id)

    def rollback(self) -> str:
        """Make the previously current version current again; returns its id."""
        hist = self.history()
        current = self.current_id()
        while hist:
            candidate = hist.pop()
            if candidate != current and (self.versions_dir / candidate).is_dir():
                write_text_atomic(self.root / "HISTORY", "\n".join(hist) + ("\n" if hist else ""))
                write_text_atomic(self.root / "CURRENT", candidate + "\n")
                log.info("offline store %s: rolled back %s -> %s", self.root, current, candidate)
                return candidate
        raise SnapshotError(f"offline store {self.root}: no previous version to roll back to")

    def retain(self, keep: int) -> list[str]:
        """Delete all but the newest `keep` versions (never the current one); returns deleted ids."""
        current = self.current_id()
        versions = self.list_versions()
        doomed = [v for v in versions[: max(0, len(versions) - keep)] if v != current]
        for v in doomed:
            shutil.rmtree(self.versions_dir / v, ignore_errors=True)
        return doomed
