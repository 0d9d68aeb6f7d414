"""The online-store interface: one abstract class, one file per backend (local, redis).

Semantics every backend implements (and `tests/store/test_behaviour.py` checks for each):

* A *version* (normally the knowledge snapshot id) is written completely, verified, marked
  complete, and only then may the *current* pointer switch to it. Readers only ever read the
  version the pointer names, so a half-written version is never visible.
* `read(kind, ids)` is one batched lookup returning float32 vectors and a found mask. Missing,
  stale (generated_at older than `max_age_seconds`) and malformed values (wrong length, dtype,
  dimension or version, non-finite payload) are "not found" and counted; backend errors
  (server down, timeout) make the whole batch "not found". It never raises.
* Writes are chunked and record their progress in the version's metadata, so an interrupted
  write resumes where it stopped; re-writing a complete version is a no-op.
* `set_current` keeps a history; `rollback()` switches back to the previous version as long as
  it still exists (old versions are kept for `old_version_ttl_seconds` after being replaced).
* A version whose metadata disappears while it is written (Redis restarted without persistence)
  is detected by the next chunk and rewritten from scratch; versions that are not complete
  (being written, or data without usable metadata) are listed by `incomplete_versions()` with
  their size and removed by `gc()` (never the current one).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from feature_store.online import codec
from llm4msr.config import StoreConfig
from llm4msr.ids import check_id, unkeyable
from llm4msr.progress import progress
from llm4msr.secrets import redact
from llm4msr.versioned import VersionPointer

log = logging.getLogger(__name__)

COMPLETE = "complete"
WRITING = "writing"


class StoreError(RuntimeError):
    """The store cannot do what was asked (backend unreachable, version incomplete or unknown...)."""


class VersionLostError(StoreError):
    """The metadata of the version being written vanished under the writer (a Redis server restarted
    empty, a key evicted or deleted): what was written since is orphaned, so the write restarts."""


# A write whose version is lost more often than this gives up (the server keeps restarting).
MAX_VERSION_RESTARTS = 2


@dataclass(frozen=True)
class StoreVersion:
    """Metadata of one version held by an online store."""

    version: str
    knowledge_family: str
    dimension: int
    dtype: str
    counts: dict[str, int]
    created_at: float  # unix seconds the version started being written
    snapshot_id: str
    status: str = COMPLETE  # writing | complete
    completed_at: float | None = None
    retired_at: float | None = None  # when it stopped being current (expiry clock starts)
    # The snapshot's dataset ids (content, source); serving refuses another source. None: not recorded.
    dataset_version: str | None = None
    dataset_source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StoreVersion:
        return cls(
            version=str(d["version"]),
            knowledge_family=str(d["knowledge_family"]),
            dimension=int(d["dimension"]),
            dtype=str(d["dtype"]),
            counts={str(k): int(v) for k, v in dict(d["counts"]).items()},
            created_at=float(d["created_at"]),
            snapshot_id=str(d["snapshot_id"]),
            status=str(d.get("status", COMPLETE)),
            completed_at=None if d.get("completed_at") in (None, "") else float(d["completed_at"]),
            retired_at=None if d.get("retired_at") in (None, "") else float(d["retired_at"]),
            dataset_version=str(d["dataset_version"]) if d.get("dataset_version") else None,
            dataset_source=str(d["dataset_source"]) if d.get("dataset_source") else None,
        )

    @property
    def layout(self) -> codec.Layout:
        return codec.Layout(self.version, self.dimension, self.dtype)


@dataclass
class ReadResult:
    """One batched read. Rows of `vectors` where `found` is False are zeros."""

    vectors: np.ndarray  # float32 (n, dim); (n, 0) when there is no current version
    found: np.ndarray  # bool (n,)
    version: str | None
    n_missing: int = 0
    n_stale: int = 0
    n_malformed: int = 0
    n_errors: int = 0  # ids not read because the backend failed (down, timeout)

    @property
    def n_found(self) -> int:
        return int(self.found.sum())


@dataclass
class EntityBatch:
    """All entities of one kind to write: ids, (n, dim) vectors, (n,) generated_at unix seconds."""

    ids: np.ndarray
    vectors: np.ndarray
    generated_at: np.ndarray

    def sorted(self) -> EntityBatch:
        ids = np.asarray(self.ids).astype(str)
        if len(ids) < 2 or bool((ids[1:] >= ids[:-1]).all()):  # snapshots are usually sorted: no copy
            return EntityBatch(ids, np.asarray(self.vectors), np.asarray(self.generated_at))
        order = np.argsort(ids, kind="stable")
        return EntityBatch(ids[order], np.asarray(self.vectors)[order], np.asarray(self.generated_at)[order])


@dataclass
class WriteStats:
    version: str
    keys_written: int = 0
    keys_skipped: int = 0  # already written by an earlier, interrupted run
    chunks_written: int = 0
    seconds: float = 0.0
    already_complete: bool = False
    restarts: int = 0  # times the version was rewritten from scratch after its metadata was lost


@dataclass
class Counters:
    """Cumulative read counters (thread-safe), exported by the serving metrics."""

    reads: int = 0  # read() calls
    keys: int = 0  # ids requested
    found: int = 0
    missing: int = 0
    stale: int = 0
    malformed: int = 0
    errors: int = 0  # ids lost to backend errors
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, r: ReadResult) -> None:
        with self._lock:
            self.reads += 1
            self.keys += len(r.found)
            self.found += r.n_found
            self.missing += r.n_missing
            self.stale += r.n_stale
            self.malformed += r.n_malformed
            self.errors += r.n_errors

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {
                k: getattr(self, k)
                for k in ("reads", "keys", "found", "missing", "stale", "malformed", "errors")
            }


def empty_result(n: int, version: StoreVersion | None, *, errors: bool = False) -> ReadResult:
    dim = version.dimension if version else 0
    return ReadResult(
        vectors=np.zeros((n, dim), dtype=np.float32),
        found=np.zeros(n, dtype=bool),
        version=version.version if version else None,
        n_missing=0 if errors else n,
        n_errors=n if errors else 0,
    )


def record_digest(raw: bytes | None) -> str | None:
    return None if raw is None else hashlib.sha256(raw).hexdigest()


class OnlineStore(VersionPointer, ABC):
    """Versioned key -> vector store with an atomically switched current-version pointer
    (`llm4msr.versioned.VersionPointer`: the same switch/rollback as the offline store)."""

    backend: str = "abstract"
    error = StoreError

    def __init__(self, url: str, cfg: StoreConfig):
        self.url = url
        self.cfg = cfg
        self.counters = Counters()
        self._cache_lock = threading.Lock()
        self._cached: StoreVersion | None = None
        self._cached_at = -1e18
        self._error_logged_at = -1e18

    # ------------------------------------------------------------------ backend primitives
    @abstractmethod
    def current_id(self) -> str | None:
        """The current version's id, read from the backend (not cached)."""

    @abstractmethod
    def version_info(self, version: str) -> StoreVersion | None:
        """Metadata of `version` (any status), or None when the store does not hold it."""

    @abstractmethod
    def list_versions(self) -> list[StoreVersion]: ...

    @abstractmethod
    def _read_raw(self, version: StoreVersion, kind: str, ids: Sequence[str]) -> list[bytes | None]:
        """Raw values of `ids` in `version` (None where absent). May raise backend errors."""

    def _read_decoded(self, version: StoreVersion, kind: str, ids: Sequence[str]) -> codec.Decoded:
        """Raw read + header checks (the local store overrides it: its records need no bytes copies)."""
        raw = self._read_raw(version, kind, ids)
        return codec.decode_values(version.layout, raw, self.cfg.max_age_seconds, time.time())

    @abstractmethod
    def _begin_version(self, meta: StoreVersion) -> dict[str, int]:
        """Create (or reopen) the version in status writing; return per kind how many entities
        (a prefix of the id-sorted order) are already written."""

    @abstractmethod
    def _begin_kind(self, version: str, kind: str, batch: EntityBatch, layout: codec.Layout) -> None: ...

    @abstractmethod
    def _write_chunk(self, version: str, kind: str, start: int, ids: np.ndarray, recs: np.ndarray) -> None:
        """Write the records of sorted entities [start, start + len(ids)) and then record
        `start + len(ids)` entities done for `kind` (atomically, or data strictly first)."""

    @abstractmethod
    def _end_writes(self, version: str) -> None:
        """Make all writes of `version` durable (flush progress)."""

    @abstractmethod
    def _count(self, version: str, kind: str, ids: np.ndarray) -> int:
        """How many of `ids` are stored in `version` (count verification)."""

    @abstractmethod
    def _mark_complete(self, version: str) -> None: ...

    @abstractmethod
    def _write_pointers(self, current: str, history: list[str], previous: str | None) -> None:
        """Atomically point `current` at the version and replace the history; then start the expiry
        clock of `previous` (if any) and stop the one of `current`."""

    @abstractmethod
    def drop_version(self, version: str) -> None:
        """Delete a version that is not current (e.g. an abandoned partial write)."""

    @abstractmethod
    def _backend_status(self) -> dict[str, Any]: ...

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Held around every change of the store's versions or pointer (re-entrant per object).
        Redis needs nothing more (each change is a transaction, resumable and idempotent); the
        local store, which is files, makes it a lock that refuses a second writer."""
        yield

    def writer(self) -> contextlib.AbstractContextManager[None]:
        """Hold the store for one writer across several steps (materialize: write, verify, switch),
        so another writer cannot interleave; a second writer gets a StoreError, nothing written."""
        return self._exclusive()

    @abstractmethod
    def incomplete_versions(self) -> list[dict[str, Any]]:
        """Versions held that are not complete: `state` "writing" (resumable) or "no metadata" /
        "damaged metadata" (orphans: never readable, never resumable), with `version`, `keys`
        (Redis keys or files), `entities` (values stored) and `bytes` (memory or disk)."""

    def close(self) -> None:  # noqa: B027 - optional hook: backends without resources need nothing
        """Release connections / memory maps."""

    # ------------------------------------------------------------------ reading
    def current(self) -> StoreVersion | None:
        """The current version's metadata, re-read from the backend (not cached). It also refreshes
        the readers' pointer cache, so cached reads never lag behind what a caller just saw."""
        vid = self.current_id()
        info = self.version_info(vid) if vid else None
        with self._cache_lock:
            self._cached, self._cached_at = info, time.monotonic()
        return info

    def current_cached(self) -> StoreVersion | None:
        """The current version's metadata, re-read at most every `pointer_cache_ms` (may lag a switch
        by that much: use it to notice a switch, and read by explicit version). May raise."""
        now = time.monotonic()
        with self._cache_lock:
            if now - self._cached_at < self.cfg.pointer_cache_ms / 1000.0:
                return self._cached
        vid = self.current_id()
        with self._cache_lock:
            if vid is None:
                self._cached = None
            elif self._cached is None or self._cached.version != vid:
                self._cached = self.version_info(vid)
            self._cached_at = now
            return self._cached

    def invalidate(self) -> None:
        """Forget the cached pointer (next read re-reads it)."""
        with self._cache_lock:
            self._cached_at = -1e18

    def read(self, kind: str, entity_ids: Sequence[str], version: StoreVersion | None = None) -> ReadResult:
        """Vectors of `entity_ids` in `version` (default: the current one, through the pointer cache);
        never raises on the request path. Pass `version` to read several kinds of one version."""
        ids = list(entity_ids)
        n = len(ids)
        try:
            cur = version if version is not None else self.current_cached()
            result = empty_result(n, cur) if cur is None or n == 0 else self._read_keyable(cur, kind, ids)
        except Exception as exc:  # noqa: BLE001 - the request path must not raise
            self.invalidate()
            now = time.monotonic()
            if now - self._error_logged_at > 10.0:
                self._error_logged_at = now
                log.warning("online store %s: read failed, returning missing: %s", self.redacted_url, exc)
            with self._cache_lock:
                cached = self._cached
            result = empty_result(n, version or cached, errors=True)
        self.counters.add(result)
        return result

    def _read_keyable(self, cur: StoreVersion, kind: str, ids: list[str]) -> ReadResult:
        """Ids no store can hold exactly (NUL, lone surrogates: `llm4msr.ids.unkeyable`) are missing
        on every backend: never a prefix match (local), never a backend error (Redis)."""
        bad = unkeyable(ids)
        if not bad:
            dec = self._read_decoded(cur, kind, ids)
            return ReadResult(dec.vectors, dec.found, cur.version, dec.missing, dec.stale, dec.malformed, 0)
        keep = np.ones(len(ids), dtype=bool)
        keep[bad] = False
        out = empty_result(len(ids), cur)
        if keep.any():
            dec = self._read_decoded(cur, kind, [v for v, k in zip(ids, keep.tolist(), strict=True) if k])
            out.vectors[keep], out.found[keep] = dec.vectors, dec.found
            out.n_missing, out.n_stale, out.n_malformed = dec.missing + len(bad), dec.stale, dec.malformed
        return out

    # ------------------------------------------------------------------ writing
    def write_version(
        self,
        version: str,
        *,
        knowledge_family: str,
        snapshot_id: str,
        entities: dict[str, EntityBatch],
        on_chunk: Callable[[str, int, int], None] | None = None,
        dataset_version: str | None = None,
        dataset_source: str | None = None,
    ) -> WriteStats:
        """Write all entities as `version` (status writing). Resumes an interrupted write of the
        same content; a complete version with the same shape is left as is. Does not switch."""
        check_id(version, "version", self.redacted_url)
        t0 = time.perf_counter()
        entities = {check_id(k, "kind", version): b.sorted() for k, b in entities.items() if len(b.ids)}
        if not entities:
            raise ValueError(f"version {version}: nothing to write (no entities)")
        dims = {k: int(np.asarray(b.vectors).shape[1]) for k, b in entities.items()}
        if len(set(dims.values())) != 1:
            raise ValueError(f"version {version}: kinds have different dimensions {dims}")
        for k, b in entities.items():
            if bool((b.ids[1:] == b.ids[:-1]).any()):  # sorted: duplicates are neighbours
                raise ValueError(f"version {version}: kind {k!r} has duplicate entity ids")
            if bad := unkeyable(b.ids.tolist()):
                raise ValueError(
                    f"version {version}: kind {k!r} entity id {str(b.ids[bad[0]])!r} cannot be stored: "
                    "expected text without NUL characters or lone surrogates"
                )
        dimension = next(iter(dims.values()))
        counts = {k: len(b.ids) for k, b in entities.items()}
        meta = StoreVersion(
            version=version,
            knowledge_family=knowledge_family,
            dimension=dimension,
            dtype=self.cfg.value_dtype,
            counts=counts,
            created_at=time.time(),
            snapshot_id=snapshot_id,
            status=WRITING,
            dataset_version=dataset_version,
            dataset_source=dataset_source,
        )
        with self._exclusive():
            return self._write_version(meta, entities, on_chunk, t0)

    def _write_version(
        self,
        meta: StoreVersion,
        entities: dict[str, EntityBatch],
        on_chunk: Callable[[str, int, int], None] | None,
        t0: float,
    ) -> WriteStats:
        version, dimension, counts, knowledge_family = (
            meta.version,
            meta.dimension,
            meta.counts,
            meta.knowledge_family,
        )
        stats = WriteStats(version)
        existing = self.version_info(version)
        if existing is not None:
            same = (existing.dimension, existing.dtype, existing.counts, existing.knowledge_family) == (
                dimension,
                meta.dtype,
                counts,
                knowledge_family,
            )
            if existing.status == COMPLETE and same:
                stats.already_complete = True
                stats.keys_skipped = sum(counts.values())
                stats.seconds = time.perf_counter() - t0
                return stats
            if not same or existing.status == COMPLETE:
                if self.current_id() == version:
                    raise StoreError(f"version {version} is current and differs from what is being written")
                log.warning("online store: discarding version %s written with a different shape", version)
                self.drop_version(version)
            else:
                meta = StoreVersion(**{**meta.to_dict(), "created_at": existing.created_at})
        total = sum(counts.values())
        while True:
            done = self._begin_version(meta)
            try:
                with progress(total, f"write {version}", "keys", logger=log, leave=False) as bar:
                    self._write_and_flush(version, entities, done, meta.layout, stats, bar, on_chunk)
                break
            except VersionLostError as exc:
                if stats.restarts >= MAX_VERSION_RESTARTS:
                    raise StoreError(
                        f"online store {self.redacted_url}: the metadata of version {version} was lost "
                        f"{stats.restarts + 1} times while writing it ({exc}); is the server restarting "
                        "or evicting keys (use maxmemory-policy noeviction)?"
                    ) from exc
                log.warning(
                    "online store %s: %s; discarding what was written and writing version %s again",
                    self.redacted_url,
                    exc,
                    version,
                )
                self.drop_version(version)  # the orphans written since the loss
                stats = WriteStats(version, restarts=stats.restarts + 1)
                meta = StoreVersion(**{**meta.to_dict(), "created_at": time.time()})
        stats.seconds = time.perf_counter() - t0
        return stats

    def _write_and_flush(
        self,
        version: str,
        entities: dict[str, EntityBatch],
        done: dict[str, int],
        layout: codec.Layout,
        stats: WriteStats,
        bar: Any,
        on_chunk: Callable[[str, int, int], None] | None,
    ) -> None:
        """Write every chunk, then make it durable. Interrupted, the progress made is still
        recorded, and a failure of that flush does not hide the interruption."""
        try:
            self._write_all(version, entities, done, layout, stats, bar, on_chunk)
        except BaseException:
            with contextlib.suppress(Exception):
                self._end_writes(version)
            raise
        self._end_writes(version)

    def _write_all(
        self,
        version: str,
        entities: dict[str, EntityBatch],
        done: dict[str, int],
        layout: codec.Layout,
        stats: WriteStats,
        bar: Any,
        on_chunk: Callable[[str, int, int], None] | None,
    ) -> None:
        chunk = self.cfg.write_chunk
        for kind in sorted(entities):
            batch = entities[kind]
            n = len(batch.ids)
            n_chunks = (n + chunk - 1) // chunk
            self._begin_kind(version, kind, batch, layout)
            first = n_chunks if done.get(kind, 0) >= n else done.get(kind, 0) // chunk
            skipped = min(first * chunk, n)
            stats.keys_skipped += skipped
            bar.update(skipped)
            for ci in range(first, n_chunks):
                a, b = ci * chunk, min(n, (ci + 1) * chunk)
                recs = codec.encode(layout, batch.vectors[a:b], batch.generated_at[a:b])
                self._write_chunk(version, kind, a, batch.ids[a:b], recs)
                stats.keys_written += b - a
                stats.chunks_written += 1
                bar.update(b - a)
                if on_chunk is not None:
                    on_chunk(kind, ci, n_chunks)

    def verify_version(
        self, version: str, entities: dict[str, EntityBatch], sample: int, seed: int = 0
    ) -> dict:
        """Check counts and a seeded sample of value checksums against what should be there."""
        info = self.version_info(version)
        if info is None:
            raise StoreError(f"version {version} not found in {self.redacted_url}")
        rng = np.random.default_rng(seed)
        checked = 0
        for kind, batch in entities.items():
            ids = np.asarray(batch.ids).astype(str)
            have = self._count(version, kind, ids)
            if have != len(ids) or info.counts.get(kind) != len(ids):
                raise StoreError(
                    f"version {version} kind {kind!r}: {have} values stored, metadata says "
                    f"{info.counts.get(kind)}, snapshot has {len(ids)}"
                )
            k = min(sample, len(ids))
            if k == 0:
                continue
            pick = np.sort(rng.choice(len(ids), size=k, replace=False))
            expected = codec.split_records(
                codec.encode(
                    info.layout, np.asarray(batch.vectors)[pick], np.asarray(batch.generated_at)[pick]
                )
            )
            got = self._read_raw(info, kind, [str(x) for x in ids[pick]])
            for i, (e, g) in enumerate(zip(expected, got, strict=True)):
                if record_digest(e) != record_digest(g):
                    raise StoreError(
                        f"version {version} kind {kind!r} entity {ids[pick][i]!r}: stored value checksum "
                        f"{(record_digest(g) or 'absent')[:12]} != expected {record_digest(e)[:12]}"
                    )
            checked += k
        with self._exclusive():
            self._mark_complete(version)
        return {"counts": dict(info.counts), "checksums_verified": checked}

    # ------------------------------------------------------------------ pointer (VersionPointer)
    def pointer_label(self) -> str:
        return f"online store {self.redacted_url}"

    def is_complete(self, version: str) -> bool:
        info = self.version_info(version)
        return info is not None and info.status == COMPLETE

    def check_switchable(self, version: str) -> None:
        info = self.version_info(version)
        if info is None:
            raise StoreError(f"version {version} not found in {self.redacted_url}")
        if info.status != COMPLETE:
            raise StoreError(f"version {version} is not complete (status {info.status}); refusing to switch")

    def set_current(self, version: str) -> None:
        """Switch readers to `version` (must be complete). The previous one goes on the history."""
        with self._exclusive():
            super().set_current(version)
            self.invalidate()

    def rollback(self) -> str:
        """Make the previously current version current again; returns its id."""
        with self._exclusive():
            try:
                return super().rollback()
            finally:
                self.invalidate()

    # ------------------------------------------------------------------ maintenance
    def gc(self, *, include_writing: bool = False, dry_run: bool = False) -> list[dict[str, Any]]:
        """Remove incomplete versions other than the current one: always those without usable
        metadata (orphans: nothing can read or resume them), and with `include_writing` also
        partial writes (which a re-run of the same materialization would resume). Returns what
        was (dry_run: would be) removed, as listed by `incomplete_versions()`."""
        with self._exclusive():
            return self._gc(include_writing, dry_run)

    def _gc(self, include_writing: bool, dry_run: bool) -> list[dict[str, Any]]:
        current = self.current_id()
        removed = []
        for entry in self.incomplete_versions():
            if entry["version"] == current or (entry["state"] == WRITING and not include_writing):
                continue
            if not dry_run:
                self.drop_version(entry["version"])
                log.info(
                    "online store %s: removed %s version %s (%d keys, %d bytes)",
                    self.redacted_url,
                    entry["state"],
                    entry["version"],
                    entry["keys"],
                    entry["bytes"],
                )
            removed.append(entry)
        return removed

    # ------------------------------------------------------------------ status
    @property
    def redacted_url(self) -> str:
        return redact(self.url)

    def status(self) -> dict[str, Any]:
        """Current version, counts, age, history, memory, read counters (for `llm4msr store status`)."""
        cur = self.current()
        return {
            "backend": self.backend,
            "url": self.redacted_url,
            "current": cur.to_dict() if cur else None,
            "age_seconds": round(time.time() - (cur.completed_at or cur.created_at), 1) if cur else None,
            "history": self.history(),
            "versions": [v.to_dict() for v in self.list_versions()],
            "incomplete": self.incomplete_versions(),
            "counters": self.counters.as_dict(),
            **self._backend_status(),
        }

    def __enter__(self) -> OnlineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
