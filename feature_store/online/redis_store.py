"""Redis online store: plain redis-py (pipelines, hiredis parser, its Retry with exponential backoff).

Keys (NS = StoreConfig.namespace):

    NS:h:<version>:<kind>:<bucket>      hash: entity id -> value (codec header + float16/float32 payload)
    NS:meta:<version>                   hash: StoreVersion fields (counts as JSON), buckets, progress:<kind>
    NS:versions                         set of version ids ever written (pruned when meta expires)
    NS:current                          the current version id (the pointer)
    NS:history                          list of previously current ids, oldest first (rollback)

Each (version, kind) is split into `buckets` hashes (fixed when the version is first written:
ceil(largest kind / redis_bucket_fields), recorded in the meta hash); an entity lives in bucket
crc32(utf-8 id) % buckets. So a batch read is one HMGET per bucket touched, pipelined in one
round trip, and expiring, keeping or dropping a whole version is O(buckets) commands, never a
keyspace SCAN; no hash grows so big that freeing it on expiry stalls the server for long.

Writes: per chunk of `write_chunk` id-sorted entities, data strictly first: one pipeline with, per
bucket touched, EXISTS of the bucket's marker (one server: the metadata) and one HSET; then the new
`progress:<kind>` in a MULTI/EXEC that also asks whether the metadata still exists. A server that
restarted empty answers 0 and the version is written again from scratch instead of being
continued without metadata; a resumed materialization skips exactly what the progress claims
(HSET overwrites: re-sending a chunk is idempotent, which is what lets redis-py's Retry re-send it
after a connection error or timeout). The Redis Cluster store (`redis_cluster.py`) is this class
with other key names. The pointer and the history
switch in one MULTI/EXEC after the version has been verified; then the previous version's keys get
EXPIRE old_version_ttl_seconds (meta first, buckets a minute later than meta, so a version whose
metadata still exists always has its data); a version brought back by rollback is PERSISTed (meta
first) before the pointer moves to it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from feature_store.online import codec
from feature_store.online.base import (
    COMPLETE,
    WRITING,
    EntityBatch,
    OnlineStore,
    StoreError,
    StoreVersion,
    VersionLostError,
)
from llm4msr.config import StoreConfig
from llm4msr.ids import check_id, is_valid_id
from llm4msr.secrets import split_password

log = logging.getLogger(__name__)
T = TypeVar("T")
SCAN_COUNT = 5000
BACKOFF_CAP_S = 10.0


def bucket_of(entity_ids: Sequence[str], buckets: int) -> np.ndarray:
    """Bucket index (int64) of each id: crc32 of its UTF-8 bytes modulo `buckets` (stable across
    processes and languages, unlike Python's hash())."""
    crcs = map(zlib.crc32, map(str.encode, entity_ids))
    return np.fromiter(crcs, dtype=np.int64, count=len(entity_ids)) % buckets


def group_by_bucket(entity_ids: Sequence[str], buckets: int) -> list[tuple[int, np.ndarray]]:
    """[(bucket, positions of its ids)] for the buckets the ids touch (one command each)."""
    if buckets == 1:
        return [(0, np.arange(len(entity_ids)))]
    bucket = bucket_of(entity_ids, buckets)
    order = np.argsort(bucket, kind="stable")
    cuts = np.flatnonzero(np.diff(bucket[order])) + 1
    return [(int(bucket[rows[0]]), rows) for rows in np.split(order, cuts)]


class RedisStore(OnlineStore):
    backend = "redis"
    read_retries = 1  # a read retried once on a fresh connection after a dropped one

    def __init__(self, url: str, cfg: StoreConfig):
        import redis
        from redis.backoff import ExponentialBackoff, NoBackoff
        from redis.retry import Retry

        # The password never stays in the URL this object keeps (and prints): it comes from the URL
        # or, when the URL has none or a redacted one (***, as in dumped configs), from the
        # environment variable store.password_env.
        url, password, redacted = split_password(url)
        super().__init__(url, cfg)
        self._redis = redis
        password = password or os.environ.get(cfg.password_env) or None
        if redacted and password is None:
            raise StoreError(
                f"store URL {self.redacted_url}: the password is redacted (***), and the environment "
                f"variable {cfg.password_env} (store.password_env) that should hold it is not set"
            )
        kwargs: dict[str, Any] = {} if password is None else {"password": password}
        read_s, write_s = cfg.timeout_ms / 1000.0, cfg.write_timeout_ms / 1000.0
        # Reads: a dropped connection (server restarted) is retried once on a fresh one; a timeout is
        # not (the batch reads as missing within timeout_ms).
        self._r = self._client(
            url,
            read_s,
            read_s,
            Retry(NoBackoff(), self.read_retries, supported_errors=(redis.ConnectionError,)),
            **kwargs,
        )
        # Writes: store.retries retries of connection errors and timeouts, waiting backoff_ms, then
        # twice that, ... (ExponentialBackoff waits base * 2**failures, failures counted from 1).
        backoff = ExponentialBackoff(cap=BACKOFF_CAP_S, base=cfg.backoff_ms / 2000.0)
        self._w = self._client(url, write_s, min(write_s, 5.0), Retry(backoff, cfg.retries), **kwargs)
        # Glob characters in the namespace would make the SCAN pattern of drop_version match other keys.
        ns = check_id(cfg.namespace, "store.namespace", self.redacted_url)
        self._k_current, self._k_history, self._k_versions = self._pointer_keys(ns)
        self._buckets: dict[str, int] = {}  # version -> bucket count (immutable once written)
        self._damaged_warned: set[str] = set()

    # ------------------------------------------------------------------ keys and clients (the cluster
    # store, redis_cluster.py, overrides these five)
    def _client(self, url: str, timeout_s: float, connect_timeout_s: float, retry: Any, **kwargs: Any) -> Any:
        return self._redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=connect_timeout_s, retry=retry, **kwargs
        )

    def _pointer_keys(self, ns: str) -> tuple[str, str, str]:
        """(pointer, history, version set) keys."""
        return f"{ns}:current", f"{ns}:history", f"{ns}:versions"

    def _bucket_key(self, version: str, kind: str, bucket: int) -> str:
        return f"{self.cfg.namespace}:h:{version}:{kind}:{bucket}"

    def _marker_key(self, version: str, bucket: int) -> str:
        """The key whose existence says the server still holds `bucket` of `version` (one server:
        the metadata; it vanishes with the data when the server restarts empty)."""
        return self._meta_key(version)

    def _markers(self, version: str, buckets: int) -> list[str]:
        """Keys written when a version is started besides its metadata (none on one server)."""
        return []

    def _server_memory(self) -> dict[str, Any]:
        info = self._w.info("memory")
        mem = {k: info.get(k) for k in ("used_memory", "used_memory_human", "maxmemory")}
        return {**mem, "dbsize": self._w.dbsize()}

    # ------------------------------------------------------------------ helpers
    def _meta_key(self, version: str) -> str:
        return f"{self.cfg.namespace}:meta:{check_id(version, 'version', self.redacted_url)}"

    def _data_keys(self, version: str, kinds: Sequence[str], buckets: int) -> list[str]:
        return [self._bucket_key(version, k, b) for k in kinds for b in range(buckets)]

    def value_location(self, version: str, kind: str, entity_id: str) -> tuple[str, str]:
        """(hash key, field) holding one entity's value; for tools and tests that touch values."""
        b = int(bucket_of([entity_id], self.buckets(version))[0])
        return self._bucket_key(version, kind, b), entity_id

    def buckets(self, version: str) -> int:
        """How many hashes each kind of `version` is split into (read from its metadata once)."""
        n = self._buckets.get(version)
        if n is None:
            raw = self._call(
                f"reading metadata of {version}", lambda: self._r.hget(self._meta_key(version), "buckets")
            )
            n = int(raw) if raw else 1
            self._buckets[version] = n
        return n

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run a backend call (redis-py has retried it as configured: reads once on a dropped
        connection, writes store.retries times) and turn its errors into one-line StoreErrors."""
        try:
            return fn()
        except self._redis.AuthenticationError as exc:
            raise StoreError(
                f"redis at {self.redacted_url} refused the credentials while {what}: {exc} (the password "
                f"comes from the URL or the environment variable {self.cfg.password_env}, "
                "store.password_env)"
            ) from exc
        except (self._redis.ConnectionError, self._redis.TimeoutError) as exc:
            raise StoreError(f"redis at {self.redacted_url} unreachable while {what}: {exc}") from exc
        except (self._redis.RedisError, self._redis.exceptions.RedisClusterException) as exc:
            raise StoreError(f"redis at {self.redacted_url}: {what} failed: {exc}") from exc

    def _version_keys(self, version: str) -> list[str]:
        """Data keys of `version` from its metadata (kinds x buckets); SCAN only without metadata."""
        info = self.version_info(version)
        if info is not None:
            nb = self.buckets(version)
            return self._data_keys(version, sorted(info.counts), nb) + self._markers(version, nb)
        return self._scan(f"{self.cfg.namespace}:h:{check_id(version, 'version', self.redacted_url)}:*")

    def _scan(self, pattern: str) -> list[str]:
        """All keys matching `pattern` (SCAN: O(keyspace), for maintenance, never the read path)."""
        return [k.decode() for k in self._w.scan_iter(match=pattern, count=SCAN_COUNT)]

    def _unlink(self, pipe: Any, keys: list[str]) -> None:
        for k in keys:  # one key per command: a cluster pipeline routes each to its node
            pipe.unlink(k)

    # ------------------------------------------------------------------ metadata
    def current_id(self) -> str | None:
        raw = self._call("reading the current-version pointer", lambda: self._r.get(self._k_current))
        return (
            check_id(raw.decode(), "version", f"{self.redacted_url} key {self._k_current}") if raw else None
        )

    def version_info(self, version: str) -> StoreVersion | None:
        """None when the store has no usable metadata of `version`: absent, or left without its
        fields by a server that restarted during a write (then it is listed by incomplete_versions)."""
        raw = self._call(f"reading metadata of {version}", lambda: self._r.hgetall(self._meta_key(version)))
        return self._parse_meta(version, raw) if raw else None

    def _parse_meta(self, version: str, raw: dict[bytes, bytes]) -> StoreVersion | None:
        try:
            d = {k.decode(): v.decode() for k, v in raw.items()}
            d["counts"] = json.loads(d["counts"])
            info = StoreVersion.from_dict(d)
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            if version not in self._damaged_warned:
                self._damaged_warned.add(version)
                log.warning(
                    "redis %s: key %s has no usable version metadata (%s: %s; fields %s); the version "
                    "is incomplete: re-materialize it or remove it with `llm4msr store gc`",
                    self.redacted_url,
                    self._meta_key(version),
                    type(exc).__name__,
                    exc,
                    sorted(k.decode(errors="replace") for k in raw)[:8],
                )
            return None
        if d.get("buckets"):
            self._buckets[version] = int(d["buckets"])
        return info

    def list_versions(self) -> list[StoreVersion]:
        out = []
        for v in sorted(
            m.decode() for m in self._call("listing versions", lambda: self._w.smembers(self._k_versions))
        ):
            info = self.version_info(v)
            if info is None:
                self._w.srem(self._k_versions, v)  # expired
            else:
                out.append(info)
        return out

    def history(self) -> list[str]:
        raw = self._call("reading history", lambda: self._w.lrange(self._k_history, 0, -1))
        return [check_id(h.decode(), "version", f"{self.redacted_url} key {self._k_history}") for h in raw]

    # ------------------------------------------------------------------ reading
    def _read_raw(self, version: StoreVersion, kind: str, ids: Sequence[str]) -> list[bytes | None]:
        """One HMGET per bucket touched, all pipelined in one round trip; values in request order."""
        fields = list(map(str, ids))
        if not fields:
            return []
        groups = group_by_bucket(fields, self.buckets(version.version))
        if len(groups) == 1:
            return self._r.hmget(self._bucket_key(version.version, kind, groups[0][0]), fields)
        pipe = self._r.pipeline(transaction=False)
        for b, rows in groups:
            pipe.hmget(self._bucket_key(version.version, kind, b), [fields[i] for i in rows.tolist()])
        out: list[bytes | None] = [None] * len(fields)
        for (_, rows), values in zip(groups, pipe.execute(), strict=True):
            for i, v in zip(rows.tolist(), values, strict=True):
                out[i] = v
        return out

    # ------------------------------------------------------------------ writing
    def _begin_version(self, meta: StoreVersion) -> dict[str, int]:
        key = self._meta_key(meta.version)
        buckets = max(1, math.ceil(max(meta.counts.values()) / self.cfg.redis_bucket_fields))

        def begin() -> dict[str, int]:
            existing = self._w.hgetall(key)
            if existing and self._parse_meta(meta.version, existing) is not None:
                done = {k.decode()[9:]: int(v) for k, v in existing.items() if k.startswith(b"progress:")}
                self._buckets[meta.version] = nb = int(existing.get(b"buckets", 1))
                markers = self._markers(meta.version, nb)
                pipe = self._w.pipeline(transaction=False)
                for m in markers:
                    pipe.exists(m)
                lost = [m for m, ok in zip(markers, pipe.execute(), strict=True) if not ok]
                if not lost:
                    log.info("redis store: resuming version %s (%s)", meta.version, done)
                    return done
                log.warning(
                    "redis store: version %s lost %d bucket(s) (a node restarted empty?), e.g. %s; "
                    "writing it from scratch",
                    meta.version,
                    len(lost),
                    lost[0],
                )
            # Nothing usable to resume: a fresh start must not inherit the values (or the progress
            # fields) an earlier write left without metadata.
            orphans = self._scan(f"{self.cfg.namespace}:h:{meta.version}:*")
            if orphans or existing:
                log.warning(
                    "redis store: version %s had no usable metadata; discarding %d orphaned key(s) and "
                    "writing it from scratch",
                    meta.version,
                    len(orphans) + bool(existing),
                )
                pipe = self._w.pipeline(transaction=False)
                self._unlink(pipe, orphans)
                pipe.delete(key)
                pipe.execute()
            fields = {
                k: ("" if v is None else json.dumps(v) if k == "counts" else str(v))
                for k, v in meta.to_dict().items()
            }
            fields["buckets"] = str(buckets)
            pipe = self._w.pipeline(transaction=False)
            for m in self._markers(meta.version, buckets):  # before the metadata that vouches for them
                pipe.set(m, b"1")
            pipe.execute()
            pipe = self._w.pipeline(transaction=False)
            pipe.hset(key, mapping=fields)
            pipe.sadd(self._k_versions, meta.version)
            pipe.execute()
            self._buckets[meta.version] = buckets
            return {}

        return self._call(f"starting version {meta.version}", begin)

    def _begin_kind(self, version: str, kind: str, batch: EntityBatch, layout: codec.Layout) -> None:
        return None

    def _write_chunk(self, version: str, kind: str, start: int, ids: np.ndarray, recs: np.ndarray) -> None:
        """Data strictly first (one pipeline: per bucket EXISTS marker then HSET, one round trip per
        node), then the progress, in a MULTI/EXEC that also asks whether the metadata still exists."""
        meta = self._meta_key(version)
        id_list, values = ids.tolist(), codec.split_records(recs)
        what = f"writing version {version} {kind} entities {start}..{start + len(ids)}"
        pipe = self._w.pipeline(transaction=False)
        for b, rows in group_by_bucket(id_list, self.buckets(version)):
            flat: list[Any] = [None] * (2 * len(rows))  # field, value, field, value, ...
            flat[0::2] = [id_list[i] for i in rows.tolist()]
            flat[1::2] = [values[i] for i in rows.tolist()]
            pipe.exists(self._marker_key(version, b))  # 0: the server lost this bucket's version
            pipe.execute_command("HSET", self._bucket_key(version, kind, b), *flat)
        if not all(self._call(what, pipe.execute)[0::2]):
            raise VersionLostError(f"the server no longer holds the version ({what})")
        pipe = self._w.pipeline(transaction=True)
        pipe.hexists(meta, "counts")
        pipe.hset(meta, f"progress:{kind}", start + len(ids))
        if not self._call(what, pipe.execute)[0]:
            raise VersionLostError(f"the server no longer holds the metadata of the version ({what})")

    def _end_writes(self, version: str) -> None:
        return None  # every chunk was confirmed by its EXEC

    def _count(self, version: str, kind: str, ids: np.ndarray) -> int:
        """Fields stored for `kind` (HLEN per bucket): O(buckets), not O(entities). Each entity is
        one field, so with the sampled checksums this verifies the version without reading it all."""
        keys = self._data_keys(version, [kind], self.buckets(version))

        def count() -> int:
            pipe = self._w.pipeline(transaction=False)
            for k in keys:
                pipe.hlen(k)
            return int(sum(pipe.execute()))

        return self._call(f"counting version {version}", count)

    def _mark_complete(self, version: str) -> None:
        self._call(
            f"completing version {version}",
            lambda: self._w.hset(
                self._meta_key(version), mapping={"status": COMPLETE, "completed_at": str(time.time())}
            ),
        )

    def drop_version(self, version: str) -> None:
        if self.current_id() == version:
            raise StoreError(f"version {version} is current; roll back or switch before dropping it")

        def drop() -> None:
            keys = self._version_keys(version)
            pipe = self._w.pipeline(transaction=False)
            self._unlink(pipe, keys)
            pipe.delete(self._meta_key(version))
            pipe.srem(self._k_versions, version)
            pipe.execute()
            self._buckets.pop(version, None)

        self._call(f"dropping version {version}", drop)

    # ------------------------------------------------------------------ pointer
    def _write_pointers(self, current: str, history: list[str], previous: str | None) -> None:
        version = current
        ttl = self.cfg.old_version_ttl_seconds
        meta = self._meta_key(version)

        def persist() -> None:  # a rolled-back-to version may be expiring: keep it (meta first)
            if self._w.ttl(meta) >= 0 or self.version_info(version).retired_at:
                self._w.persist(meta)
                pipe = self._w.pipeline(transaction=False)
                for k in self._version_keys(version):
                    pipe.persist(k)
                pipe.execute()
            self._w.hset(meta, "retired_at", "")

        def switch() -> None:  # pointer and history: one slot, one MULTI/EXEC
            pipe = self._w.pipeline(transaction=True)
            pipe.set(self._k_current, version)
            pipe.delete(self._k_history)
            if history:
                pipe.rpush(self._k_history, *history)
            pipe.execute()
            if previous:  # starts its expiry clock (after the switch: never retire the current one)
                self._w.hset(self._meta_key(previous), "retired_at", str(time.time()))

        self._call(f"keeping version {version}", persist)
        self._call(f"switching the pointer to {version}", switch)
        if previous:
            try:
                keys = self._version_keys(previous)
                pipe = self._w.pipeline(transaction=False)
                pipe.expire(self._meta_key(previous), ttl)
                for k in keys:
                    pipe.expire(k, ttl + 60)
                pipe.execute()
            except (self._redis.RedisError, StoreError) as exc:
                log.warning(
                    "redis store: pointer switched to %s but expiring %s failed: %s", version, previous, exc
                )

    # ------------------------------------------------------------------ incomplete versions
    def incomplete_versions(self) -> list[dict[str, Any]]:
        """Versions without complete metadata found by SCANning the namespace's data and metadata
        keys (NS:versions is no guide: a server that restarted lost it too), with their size."""
        ns = self.cfg.namespace

        def collect() -> list[dict[str, Any]]:
            data: dict[str, list[str]] = {}
            for key in self._scan(f"{ns}:h:*"):
                version = key[len(ns) + 3 :].rsplit(":", 2)[0]
                if is_valid_id(version):
                    data.setdefault(version, []).append(key)
            metas = {k[len(ns) + 6 :] for k in self._scan(f"{ns}:meta:*")}
            current = self.current_id()
            out = []
            for version in sorted(set(data) | {m for m in metas if is_valid_id(m)}):
                raw = self._w.hgetall(self._meta_key(version)) if version in metas else {}
                info = self._parse_meta(version, raw) if raw else None
                if info is not None and info.status == COMPLETE:
                    continue
                keys = data.get(version, []) + ([self._meta_key(version)] if raw else [])
                pipe = self._w.pipeline(transaction=False)
                for k in keys:
                    pipe.memory_usage(k)
                for k in data.get(version, []):
                    pipe.hlen(k)
                sizes = pipe.execute(raise_on_error=False)
                out.append(
                    {
                        "version": version,
                        "state": WRITING if info else "damaged metadata" if raw else "no metadata",
                        "current": version == current,
                        "keys": len(keys),
                        "entities": sum(n for n in sizes[len(keys) :] if isinstance(n, int)),
                        "bytes": sum(n for n in sizes[: len(keys)] if isinstance(n, int)),
                    }
                )
            return out

        return self._call("listing incomplete versions", collect)

    # ------------------------------------------------------------------ status
    def _backend_status(self) -> dict[str, Any]:
        def collect() -> dict[str, Any]:
            mem = self._server_memory()
            cur = self.current_id()
            meta = self.version_info(cur) if cur else None
            if meta is not None:
                nb = self.buckets(cur)
                mem["buckets"] = nb
                key = self._data_keys(cur, sorted(meta.counts), nb)[-1]
                n = self._w.hlen(key)
                usage = self._w.memory_usage(key, samples=64)
                if n and usage:
                    mem["bytes_per_entity_estimate"] = round(usage / n, 1)
            return {"memory": mem, "hiredis": self._redis.utils.HIREDIS_AVAILABLE}

        return self._call("reading server status", collect)

    def ping(self) -> bool:
        try:
            return bool(self._r.ping())
        except self._redis.RedisError:
            return False

    def close(self) -> None:
        self._r.close()
        self._w.close()
