"""Versioned folders with an atomically switched "current" pointer.

    ROOT/versions/<id>/   immutable version folders, complete when they hold the marker file
    ROOT/CURRENT          the current id (one line), replaced atomically
    ROOT/HISTORY          ids that were current, oldest first (for rollback)

The offline knowledge store and the model registry are both this: a version is written to a
temporary folder, renamed into `versions/` when complete, and only then made current, so readers
see the previous version or the new one, never a partial one. Subclasses say what a complete
version is (`marker`, `validate`) and which error they raise.

Version ids (arguments, CURRENT, HISTORY) are checked with `llm4msr.ids.check_id` before they are
joined onto a path, and deletes go through `remove_tree` (strictly inside `versions/`), so an id
like `..` can neither name nor delete anything outside its own version folder.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path

from llm4msr.atomic import remove_tree, write_text_atomic
from llm4msr.ids import check_id, is_valid_id

log = logging.getLogger(__name__)


class VersionPointer(ABC):
    """The one current-version pointer + history mechanism (offline store, model registry, online
    stores): switch to a complete version, pushing the previous one on the history; roll back to
    the newest complete version of the history. Subclasses say where the pointer lives."""

    error: type[Exception] = ValueError

    @abstractmethod
    def pointer_label(self) -> str:
        """Name used in messages, e.g. "offline store ROOT"."""

    @abstractmethod
    def current_id(self) -> str | None: ...

    @abstractmethod
    def history(self) -> list[str]:
        """Versions that were current before the current one, oldest first."""

    @abstractmethod
    def check_switchable(self, version: str) -> None:
        """Raise `self.error` unless `version` is complete and may become current."""

    @abstractmethod
    def is_complete(self, version: str) -> bool: ...

    @abstractmethod
    def _write_pointers(self, current: str, history: list[str], previous: str | None) -> None:
        """Atomically make `current` current with `history` (previous: the one it replaces)."""

    def set_current(self, version: str) -> None:
        self.check_switchable(version)
        previous = self.current_id()
        if previous == version:
            return
        hist = [h for h in self.history() + ([previous] if previous else []) if h != version]
        self._write_pointers(version, hist, previous)
        log.info("%s: current %s -> %s", self.pointer_label(), previous, version)

    def rollback(self) -> str:
        """Make the previously current version current again; returns its id."""
        hist = self.history()
        current = self.current_id()
        while hist:
            candidate = hist.pop()
            if candidate != current and self.is_complete(candidate):
                self._write_pointers(candidate, hist, current)
                log.info("%s: rolled back %s -> %s", self.pointer_label(), current, candidate)
                return candidate
        raise self.error(f"{self.pointer_label()}: no previous version to roll back to")


class VersionedFolders(VersionPointer):
    kind = "versioned store"  # used in messages: "offline store", "model registry"
    marker = "manifest.json"  # a version folder without it is incomplete
    error: type[Exception] = ValueError
    id_label = "version id"  # how CURRENT/HISTORY errors name an id

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.versions_dir = self.root / "versions"

    def validate(self, path: Path) -> None:
        """Raise `self.error` if `path` is not a complete, valid version (hook for subclasses)."""

    # ---- reading
    def dir_of(self, version: str) -> Path:
        """versions/<version>, after checking the id (the only way an id becomes a path here)."""
        return self.versions_dir / check_id(version, "version id", f"{self.kind} {self.root}", self.error)

    def list_versions(self) -> list[str]:
        """Version folders; names that are not valid ids (temp folders, strays) are not versions."""
        if not self.versions_dir.is_dir():
            return []
        return sorted(p.name for p in self.versions_dir.iterdir() if p.is_dir() and is_valid_id(p.name))

    def is_complete(self, version: str) -> bool:
        return (self.dir_of(version) / self.marker).is_file()

    def path_of(self, version: str) -> Path:
        if not self.is_complete(version):
            raise self.error(f"{self.kind} {self.root}: version {version!r} not found (no {self.marker})")
        return self.versions_dir / version

    def current_id(self) -> str | None:
        pointer = self.root / "CURRENT"
        if not pointer.is_file():
            return None
        cid = pointer.read_text().strip() or None
        return None if cid is None else check_id(cid, self.id_label, pointer, self.error)

    def current_path(self) -> Path | None:
        cid = self.current_id()
        return self.versions_dir / cid if cid else None

    def history(self) -> list[str]:
        hist = self.root / "HISTORY"
        ids = [x for x in hist.read_text().split() if x] if hist.is_file() else []
        return [check_id(x, self.id_label, hist, self.error) for x in ids]

    # ---- switching (VersionPointer)
    def pointer_label(self) -> str:
        return f"{self.kind} {self.root}"

    def check_switchable(self, version: str) -> None:
        self.validate(self.path_of(version))

    def _write_pointers(self, current: str, history: list[str], previous: str | None = None) -> None:
        write_text_atomic(self.root / "HISTORY", "\n".join(history) + ("\n" if history else ""))
        write_text_atomic(self.root / "CURRENT", current + "\n")

    def retain(self, keep: int, protect: Iterable[str] = ()) -> list[str]:
        """Delete all but the newest `keep` versions (never the current one, nor any id in `protect`,
        e.g. versions something else still reads); returns deleted ids."""
        current = self.current_id()
        spared = {current, *protect}

        def published(v: str) -> tuple[int, str]:  # oldest first by completion time, id as tie-break
            marker = self.versions_dir / v / self.marker
            return (marker.stat().st_mtime_ns if marker.is_file() else 0, v)

        versions = sorted(self.list_versions(), key=published)
        doomed = [v for v in versions[: max(0, len(versions) - keep)] if v not in spared]
        for v in doomed:
            remove_tree(self.dir_of(v), self.versions_dir)
        if doomed:
            log.info(
                "%s %s: deleted %d old version(s) (keep %d): %s",
                self.kind,
                self.root,
                len(doomed),
                keep,
                doomed,
            )
        return doomed
