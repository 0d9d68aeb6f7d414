"""Embedded online store: files + memory maps, no server (the default backend).

    ROOT/CURRENT                        current version id (one line, replaced atomically)
    ROOT/HISTORY                        previously current ids, oldest first (rollback)
    ROOT/staging/<version>/             a version being written (never read by readers)
    ROOT/versions/<version>/            complete, verified versions
        meta.json                       StoreVersion fields (family, dimension, dtype, counts, status...)
        progress.json                   entities written per kind (resume point)
        <kind>.ids.npy                  sorted entity ids (numpy unicode), memory-mapped
        <kind>.values.bin               fixed-size records, same bytes as a Redis value (codec), memory-mapped

A lookup is a binary search of the memory-mapped sorted ids plus a gather of the records, then the
same header checks as Redis. The pointer files are `llm4msr.versioned.VersionedFolders`' (the
offline store's mechanism). A version folder moves from staging/ to versions/ only after it has
been verified; old versions are deleted `old_version_ttl_seconds` after they stop being current.
One writer at a time per root: every change holds an exclusive flock on ROOT/.writer.lock, and a
second writer is refused with a StoreError (materialize holds it from the pointer check to the
switch). Version ids (arguments, CURRENT, HISTORY) are checked with
`llm4msr.ids.check_id` before they become a path, and every delete is `remove_tree` (strictly
inside `staging/` or `versions/`): an id such as `..` cannot reach the root.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from feature_store.online import codec
from feature_store.online.base import COMPLETE, WRITING, EntityBatch, OnlineStore, StoreError, StoreVersion
from llm4msr.atomic import fsync_dir, remove_tree, write_json_atomic
from llm4msr.config import StoreConfig
from llm4msr.ids import check_id, is_valid_id
from llm4msr.versioned import VersionedFolders

log = logging.getLogger(__name__)

# Progress (resume point) is made durable every PROGRESS_EVERY_CHUNKS chunks or PROGRESS_EVERY_S
# seconds, data fsynced first; a killed write redoes at most that much.
PROGRESS_EVERY_S = 0.5
PROGRESS_EVERY_CHUNKS = 8
LOCK_FILE = ".writer.lock"


class _PointerFiles(VersionedFolders):
    """ROOT/CURRENT and ROOT/HISTORY, read and replaced as the offline store does."""

    kind = "local store"
    marker = "meta.json"
    error = StoreError
    id_label = "version"


def _read_meta(folder: Path) -> tuple[StoreVersion | None, str]:
    """(the version metadata in `folder`, or None with what is wrong with it)."""
    path = folder / "meta.json"
    try:
        return StoreVersion.from_dict(json.loads(path.read_text())), ""
    except FileNotFoundError:
        return None, f"{path} is missing"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, (
            f"{path}: unreadable version metadata ({type(exc).__name__}: {exc}); expected a JSON "
            "object with version, knowledge_family, dimension, dtype, counts, created_at, snapshot_id"
        )


def _disk_usage(folder: Path) -> tuple[int, int]:
    """(files, bytes) under `folder`."""
    files = [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]
    return len(files), sum(p.stat().st_size for p in files)


def _save_npy_atomic(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, arr)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class LocalStore(OnlineStore):
    backend = "local"

    def __init__(self, root: str | Path, cfg: StoreConfig):
        super().__init__(str(root), cfg)
        self.root = Path(root)
        self._pointer = _PointerFiles(self.root)
        self._maps: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self._maps_lock = threading.Lock()
        self._writers: dict[tuple[str, str], Any] = {}
        self._progress: dict[str, dict[str, int]] = {}
        self._progress_at = 0.0
        self._unflushed = 0
        self._lock_fh: Any = None  # ROOT/.writer.lock, flock'ed while this object writes
        self._lock_depth = 0

    # ------------------------------------------------------------------ one writer
    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """An exclusive flock on ROOT/.writer.lock for as long as this object changes the store
        (re-entrant). A second writer, in this or another process, gets a StoreError naming the
        lock and its holder instead of interleaving its files with ours. The kernel drops the lock
        when its holder dies, so a killed writer never leaves a stale one."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / LOCK_FILE
        fh = open(path, "a+")  # noqa: SIM115 - held until the with-block ends
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown process"
            fh.close()
            raise StoreError(
                f"{path}: another writer ({holder}) is changing the local store {self.root}; one writer "
                "per store at a time: wait for it to finish, then run this again"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        self._lock_fh, self._lock_depth = fh, 1
        try:
            yield
        finally:
            self._lock_depth = 0
            self._lock_fh = None
            fh.close()  # releases the flock

    # ------------------------------------------------------------------ paths
    def _final(self, version: str) -> Path:
        return self.root / "versions" / check_id(version, "version", self.root)

    def _staging(self, version: str) -> Path:
        return self.root / "staging" / check_id(version, "version", self.root)

    def _dir(self, version: str) -> Path | None:
        for d in (self._final(version), self._staging(version)):
            if (d / "meta.json").is_file():
                return d
        return None

    # ------------------------------------------------------------------ metadata
    def current_id(self) -> str | None:
        return self._pointer.current_id()

    def version_info(self, version: str) -> StoreVersion | None:
        """None when absent, or when a version being written has damaged metadata (it is listed by
        incomplete_versions and rewritten by the next write); damaged metadata of a complete
        version is an error naming the file."""
        d = self._dir(version)
        if d is None:
            return None
        info, problem = _read_meta(d)
        if info is not None:
            return info
        if d.parent.name == "staging":
            log.warning("local store: %s; version %s is incomplete", problem, version)
            return None
        raise StoreError(problem)

    def _write_meta(self, version: str, **changes: Any) -> None:
        d = self._dir(version)
        if d is None:
            return
        meta = json.loads((d / "meta.json").read_text())
        meta.update(changes)
        write_json_atomic(d / "meta.json", meta)

    def list_versions(self) -> list[StoreVersion]:
        """Versions with readable metadata (the others are listed by incomplete_versions)."""
        out = []
        for sub in ("versions", "staging"):
            base = self.root / sub
            if base.is_dir():
                for p in sorted(base.iterdir()):
                    if is_valid_id(p.name) and p.is_dir():
                        info, _ = _read_meta(p)
                        if info is not None:
                            out.append(info)
        return out

    def incomplete_versions(self) -> list[dict[str, Any]]:
        """staging/ folders (partial writes) and version folders without readable metadata."""
        current = self.current_id()
        out = []
        for sub in ("staging", "versions"):
            base = self.root / sub
            if not base.is_dir():
                continue
            for p in sorted(base.iterdir()):
                if not is_valid_id(p.name) or not p.is_dir() or p.is_symlink():
                    continue
                info, _ = _read_meta(p)
                if info is not None and sub == "versions":
                    continue
                state = (
                    WRITING if info else "damaged metadata" if (p / "meta.json").exists() else "no metadata"
                )
                try:
                    done = json.loads((p / "progress.json").read_text()) if info else {}
                    entities = sum(int(v) for v in done.values())
                except (OSError, ValueError, TypeError, AttributeError):
                    entities = 0
                files, nbytes = _disk_usage(p)
                out.append(
                    {
                        "version": p.name,
                        "state": state,
                        "current": p.name == current,
                        "keys": files,
                        "entities": entities,
                        "bytes": nbytes,
                        "path": str(p),
                    }
                )
        return out

    def history(self) -> list[str]:
        return self._pointer.history()

    # ------------------------------------------------------------------ reading
    def _open(self, version: StoreVersion, kind: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(sorted ids, records) of one kind, memory-mapped once per process and version."""
        d = self._dir(version.version)
        if d is None:
            return None
        key = (str(d), kind)
        with self._maps_lock:
            hit = self._maps.get(key)
        if hit is not None:
            return hit
        ids_path, val_path = d / f"{kind}.ids.npy", d / f"{kind}.values.bin"
        if not ids_path.is_file():
            return None  # the version has no entity of this kind
        ids = np.load(ids_path, mmap_mode="r")
        size = version.layout.size
        nbytes = val_path.stat().st_size
        if nbytes != len(ids) * size:
            raise StoreError(f"{val_path}: {nbytes} bytes, expected {len(ids)} records x {size} bytes")
        rec = np.dtype((np.void, size))
        values = np.memmap(val_path, dtype=rec, mode="r", shape=(len(ids),)) if len(ids) else np.zeros(0, rec)
        if d.parent.name == "versions":  # staging maps are short-lived (verification only)
            with self._maps_lock:
                if len(self._maps) > 8:  # keep the maps of this version only
                    for k in [k for k in self._maps if k[0] != str(d)]:
                        self._maps.pop(k, None)
                self._maps[key] = (ids, values)
        return ids, values

    def _locate(self, version: StoreVersion, kind: str, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(records of the ids that exist, in request order, as opaque bytes; present mask)."""
        opened = self._open(version, kind)
        if opened is None or not len(ids) or not len(opened[0]):
            return np.zeros(0, dtype=np.dtype((np.void, version.layout.size))), np.zeros(len(ids), dtype=bool)
        index, values = opened
        q = np.asarray(ids, dtype=str)
        pos = np.minimum(np.searchsorted(index, q), len(index) - 1)
        present = index[pos] == q
        return np.asarray(values[pos if present.all() else pos[present]]), present

    def _read_decoded(self, version: StoreVersion, kind: str, ids: Sequence[str]) -> codec.Decoded:
        rows, present = self._locate(version, kind, ids)
        recs = rows.view(version.layout.rec).reshape(-1)
        return codec.decode_records(version.layout, recs, present, self.cfg.max_age_seconds, time.time())

    def _read_raw(self, version: StoreVersion, kind: str, ids: Sequence[str]) -> list[bytes | None]:
        rows, present = self._locate(version, kind, ids)
        found = iter(rows)
        return [next(found).tobytes() if p else None for p in present.tolist()]

    # ------------------------------------------------------------------ writing
    def _begin_version(self, meta: StoreVersion) -> dict[str, int]:
        staging = self._staging(meta.version)
        if _read_meta(staging)[0] is not None:
            try:
                progress = json.loads((staging / "progress.json").read_text())
            except (OSError, ValueError):
                progress = {}
            self._progress[meta.version] = {str(k): int(v) for k, v in progress.items()}
            log.info("local store: resuming version %s (%s)", meta.version, self._progress[meta.version])
            return dict(self._progress[meta.version])
        remove_tree(staging, self.root / "staging")
        staging.mkdir(parents=True)
        write_json_atomic(staging / "meta.json", meta.to_dict())
        write_json_atomic(staging / "progress.json", {})
        self._progress[meta.version] = {}
        return {}

    def _begin_kind(self, version: str, kind: str, batch: EntityBatch, layout: codec.Layout) -> None:
        staging = self._staging(version)
        ids_path, val_path = staging / f"{kind}.ids.npy", staging / f"{kind}.values.bin"
        want = len(batch.ids) * layout.size
        fresh = True
        if ids_path.is_file() and val_path.is_file() and val_path.stat().st_size == want:
            fresh = not np.array_equal(np.load(ids_path, mmap_mode="r"), batch.ids)
        if fresh:
            _save_npy_atomic(ids_path, np.asarray(batch.ids, dtype=str))
            with open(val_path, "wb") as fh:
                fh.truncate(want)
            self._progress[version][kind] = 0
            write_json_atomic(staging / "progress.json", self._progress[version])
        self._writers[(version, kind)] = open(val_path, "r+b")  # noqa: SIM115 - closed in _end_writes

    def _flush(self, version: str) -> None:
        for (v, _kind), fh in self._writers.items():
            if v == version:
                fh.flush()
                os.fsync(fh.fileno())
        write_json_atomic(self._staging(version) / "progress.json", self._progress[version])
        self._progress_at = time.monotonic()
        self._unflushed = 0

    def _write_chunk(self, version: str, kind: str, start: int, ids: np.ndarray, recs: np.ndarray) -> None:
        fh = self._writers[(version, kind)]
        fh.seek(start * recs.dtype.itemsize)
        fh.write(recs.tobytes())
        self._progress[version][kind] = start + len(ids)
        self._unflushed += 1
        if (
            self._unflushed >= PROGRESS_EVERY_CHUNKS
            or time.monotonic() - self._progress_at > PROGRESS_EVERY_S
        ):
            self._flush(version)  # data fsynced before the progress that claims it

    def _end_writes(self, version: str) -> None:
        self._flush(version)
        for key in [k for k in self._writers if k[0] == version]:
            self._writers.pop(key).close()

    def _count(self, version: str, kind: str, ids: np.ndarray) -> int:
        d = self._dir(version)
        if d is None or not (d / f"{kind}.ids.npy").is_file():
            return 0
        index = np.load(d / f"{kind}.ids.npy", mmap_mode="r")
        progress = json.loads((d / "progress.json").read_text()).get(kind, 0)
        ids = np.asarray(ids, dtype=str)
        if len(ids) == len(index) and np.array_equal(ids, index):  # the usual case: one O(n) pass
            present = len(ids)
        else:
            present = int(np.isin(ids, index).sum())
        return min(present, int(progress))

    def _mark_complete(self, version: str) -> None:
        staging = self._staging(version)
        if not staging.is_dir():
            return  # already complete
        self._write_meta(version, status=COMPLETE, completed_at=time.time())
        final = self._final(version)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            remove_tree(final, final.parent, ignore_errors=False)
        fsync_dir(staging)
        os.replace(staging, final)
        fsync_dir(final.parent)
        with self._maps_lock:
            for k in [k for k in self._maps if k[0] == str(staging)]:
                self._maps.pop(k)

    def drop_version(self, version: str) -> None:
        with self._exclusive():
            self._drop(version)

    def _drop(self, version: str) -> None:
        if self.current_id() == version:
            raise StoreError(f"version {version} is current; roll back or switch before dropping it")
        for k in [k for k in self._writers if k[0] == version]:
            self._writers.pop(k).close()
        remove_tree(self._staging(version), self.root / "staging")
        remove_tree(self._final(version), self.root / "versions")

    # ------------------------------------------------------------------ pointer
    def _write_pointers(self, current: str, history: list[str], previous: str | None) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_meta(current, retired_at=None)
        self._pointer._write_pointers(current, history)
        if previous:
            self._write_meta(previous, retired_at=time.time())
        self._expire(current)

    def _expire(self, current: str) -> None:
        """Delete complete versions retired longer than old_version_ttl_seconds ago."""
        now = time.time()
        for info in self.list_versions():
            if (
                info.version != current
                and info.retired_at
                and now - info.retired_at > self.cfg.old_version_ttl_seconds
            ):
                log.info(
                    "local store: deleting version %s (retired %.0f s ago)",
                    info.version,
                    now - info.retired_at,
                )
                remove_tree(self._final(info.version), self.root / "versions")

    # ------------------------------------------------------------------ status
    def _backend_status(self) -> dict[str, Any]:
        cur = self.current_id()
        d = self._dir(cur) if cur else None
        disk = sum(p.stat().st_size for p in d.iterdir() if p.is_file()) if d else 0
        info = self.version_info(cur) if cur else None
        n = sum(info.counts.values()) if info else 0
        return {
            "memory": {
                "disk_bytes": disk,
                "bytes_per_entity": round(disk / n, 1) if n else None,
                "note": "memory-mapped; resident size follows the OS page cache",
            }
        }

    def close(self) -> None:
        for fh in self._writers.values():
            fh.close()
        self._writers.clear()
        with self._maps_lock:
            self._maps.clear()
