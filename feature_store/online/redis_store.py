"""Redis online store.

Keys (NS = StoreConfig.namespace):

    NS:v:<version>:<kind>:<entity_id>   value = codec header + float16/float32 payload
    NS:meta:<version>                   hash: StoreVersion fields (counts as JSON), progress:<kind>
    NS:versions                         set of version ids ever written (pruned when meta expires)
    NS:current                          the current version id (the pointer)
    NS:history                          list of previously current ids, oldest first (rollback)

Writes go through MULTI/EXEC pipelines of MSET chunks (`write_chunk` keys) that also advance
`progress:<kind>` in the meta hash, so a chunk and its progress land together and a resumed
materialization skips exactly what is there. Chunks are retried `retries` times with exponential
backoff. The pointer and the history switch in one MULTI/EXEC after the version has been verified;
then the previous version's keys get EXPIRE old_version_ttl_seconds (meta first, keys a minute
later than meta, so a version whose metadata still exists always has its keys) and the new
current version's keys are PERSISTed (it may be an expiring one brought back by rollback).

Reads: one MGET with a pooled hiredis connection, socket timeouts `timeout_ms`, at most one
reconnect attempt; the pointer and metadata are cached for `pointer_cache_ms`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlparse

import numpy as np

from feature_store.online import codec
from feature_store.online.base import COMPLETE, EntityBatch, OnlineStore, StoreError, StoreVersion
from llm4msr.config import StoreConfig

log = logging.getLogger(__name__)
T = TypeVar("T")
SCAN_COUNT = 5000


class RedisStore(OnlineStore):
    backend = "redis"

    def __init__(self, url: str, cfg: StoreConfig):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        super().__init__(url, cfg)
        self._redis = redis
        kwargs: dict[str, Any] = {}
        if not urlparse(url).password and os.environ.get(cfg.password_env):
            kwargs["password"] = os.environ[cfg.password_env]
        read_s, write_s = cfg.timeout_ms / 1000.0, cfg.write_timeout_ms / 1000.0
        self._rpool = redis.ConnectionPool.from_url(
            url, socket_timeout=read_s, socket_connect_timeout=read_s, retry=Retry(NoBackoff(), 1), **kwargs
        )
        self._wpool = redis.ConnectionPool.from_url(
            url,
            socket_timeout=write_s,
            socket_connect_timeout=min(write_s, 5.0),
            retry=Retry(NoBackoff(), 0),
            **kwargs,
        )
        self._r = redis.Redis(connection_pool=self._rpool)
        self._w = redis.Redis(connection_pool=self._wpool)
        ns = cfg.namespace
        self._k_current, self._k_history, self._k_versions = (
            f"{ns}:current",
            f"{ns}:history",
            f"{ns}:versions",
        )

    # ------------------------------------------------------------------ helpers
    def _meta_key(self, version: str) -> str:
        return f"{self.cfg.namespace}:meta:{version}"

    def _prefix(self, version: str, kind: str) -> str:
        return f"{self.cfg.namespace}:v:{version}:{kind}:"

    def _call(self, what: str, fn: Callable[[], T], *, retries: int = 0) -> T:
        """Run a backend call; retry connection/timeout errors with backoff; raise StoreError."""
        attempt = 0
        while True:
            try:
                return fn()
            except (self._redis.ConnectionError, self._redis.TimeoutError) as exc:
                if attempt >= retries:
                    raise StoreError(
                        f"redis at {self.redacted_url} unreachable while {what} "
                        f"(after {attempt + 1} attempt(s)): {exc}"
                    ) from exc
                delay = self.cfg.backoff_ms / 1000.0 * (2**attempt)
                log.warning(
                    "redis %s: %s failed (%s); retry %d/%d in %.2fs",
                    self.redacted_url,
                    what,
                    exc,
                    attempt + 1,
                    retries,
                    delay,
                )
                time.sleep(delay)
                attempt += 1
            except self._redis.RedisError as exc:
                raise StoreError(f"redis at {self.redacted_url}: {what} failed: {exc}") from exc

    def _scan_version(self, version: str) -> Any:
        """All data keys of `version` (SCAN, in batches)."""
        cursor = 0
        match = f"{self.cfg.namespace}:v:{version}:*"
        while True:
            cursor, keys = self._w.scan(cursor=cursor, match=match, count=SCAN_COUNT)
            if keys:
                yield keys
            if cursor == 0:
                return

    # ------------------------------------------------------------------ metadata
    def _read_pointer(self) -> str | None:
        raw = self._call("reading the current-version pointer", lambda: self._r.get(self._k_current))
        return raw.decode() if raw else None

    def version_info(self, version: str) -> StoreVersion | None:
        raw = self._call(f"reading metadata of {version}", lambda: self._r.hgetall(self._meta_key(version)))
        if not raw:
            return None
        d = {k.decode(): v.decode() for k, v in raw.items()}
        d["counts"] = json.loads(d["counts"])
        return StoreVersion.from_dict(d)

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
        return [
            h.decode() for h in self._call("reading history", lambda: self._w.lrange(self._k_history, 0, -1))
        ]

    # ------------------------------------------------------------------ reading
    def _read_raw(self, version: StoreVersion, kind: str, ids: Sequence[str]) -> list[bytes | None]:
        if not ids:
            return []
        prefix = self._prefix(version.version, kind)
        return self._r.mget([prefix + str(i) for i in ids])

    # ------------------------------------------------------------------ writing
    def _begin_version(self, meta: StoreVersion) -> dict[str, int]:
        key = self._meta_key(meta.version)

        def begin() -> dict[str, int]:
            existing = self._w.hgetall(key)
            if existing:
                done = {k.decode()[9:]: int(v) for k, v in existing.items() if k.startswith(b"progress:")}
                log.info("redis store: resuming version %s (%s)", meta.version, done)
                return done
            fields = {
                k: ("" if v is None else json.dumps(v) if k == "counts" else str(v))
                for k, v in meta.to_dict().items()
            }
            pipe = self._w.pipeline(transaction=True)
            pipe.hset(key, mapping=fields)
            pipe.sadd(self._k_versions, meta.version)
            pipe.execute()
            return {}

        return self._call(f"starting version {meta.version}", begin, retries=self.cfg.retries)

    def _begin_kind(self, version: str, kind: str, batch: EntityBatch, layout: codec.Layout) -> None:
        return None

    def _write_chunk(self, version: str, kind: str, start: int, ids: np.ndarray, recs: np.ndarray) -> None:
        prefix = self._prefix(version, kind)
        mapping = dict(zip([prefix + i for i in ids.tolist()], codec.split_records(recs), strict=True))
        meta_key = self._meta_key(version)

        def write() -> None:
            pipe = self._w.pipeline(transaction=True)
            pipe.mset(mapping)
            pipe.hset(meta_key, f"progress:{kind}", start + len(ids))
            pipe.execute()

        self._call(
            f"writing version {version} {kind} entities {start}..{start + len(ids)}",
            write,
            retries=self.cfg.retries,
        )

    def _end_writes(self, version: str) -> None:
        return None

    def _count(self, version: str, kind: str, ids: np.ndarray) -> int:
        prefix = self._prefix(version, kind)
        total = 0
        step = max(1000, self.cfg.write_chunk * 5)
        for a in range(0, len(ids), step):
            keys = [prefix + i for i in ids[a : a + step].tolist()]
            total += self._call(f"counting version {version}", lambda keys=keys: self._w.exists(*keys))
        return total

    def _mark_complete(self, version: str) -> None:
        self._call(
            f"completing version {version}",
            lambda: self._w.hset(
                self._meta_key(version), mapping={"status": COMPLETE, "completed_at": str(time.time())}
            ),
        )

    def drop_version(self, version: str) -> None:
        if self._read_pointer() == version:
            raise StoreError(f"version {version} is current; roll back or switch before dropping it")

        def drop() -> None:
            for keys in self._scan_version(version):
                self._w.unlink(*keys)
            self._w.delete(self._meta_key(version))
            self._w.srem(self._k_versions, version)

        self._call(f"dropping version {version}", drop)

    # ------------------------------------------------------------------ pointer
    def _switch(self, version: str, previous: str | None, history: list[str]) -> None:
        ttl = self.cfg.old_version_ttl_seconds
        meta = self._meta_key(version)

        def persist() -> None:  # a rolled-back-to version may be expiring: keep it (meta first)
            if self._w.ttl(meta) >= 0 or self.version_info(version).retired_at:
                self._w.persist(meta)
                for keys in self._scan_version(version):
                    pipe = self._w.pipeline(transaction=False)
                    for k in keys:
                        pipe.persist(k)
                    pipe.execute()

        def switch() -> None:
            pipe = self._w.pipeline(transaction=True)
            pipe.set(self._k_current, version)
            pipe.delete(self._k_history)
            if history:
                pipe.rpush(self._k_history, *history)
            pipe.hset(meta, "retired_at", "")
            if previous:
                pipe.hset(self._meta_key(previous), "retired_at", str(time.time()))
            pipe.execute()

        self._call(f"keeping version {version}", persist, retries=self.cfg.retries)
        self._call(f"switching the pointer to {version}", switch, retries=self.cfg.retries)
        if previous:
            try:
                self._w.expire(self._meta_key(previous), ttl)
                for keys in self._scan_version(previous):
                    pipe = self._w.pipeline(transaction=False)
                    for k in keys:
                        pipe.expire(k, ttl + 60)
                    pipe.execute()
            except self._redis.RedisError as exc:
                log.warning(
                    "redis store: pointer switched to %s but expiring %s failed: %s", version, previous, exc
                )

    # ------------------------------------------------------------------ status
    def _backend_status(self) -> dict[str, Any]:
        def collect() -> dict[str, Any]:
            info = self._w.info("memory")
            mem: dict[str, Any] = {k: info.get(k) for k in ("used_memory", "used_memory_human", "maxmemory")}
            mem["dbsize"] = self._w.dbsize()
            cur = self._read_pointer()
            if cur:
                cursor, sample = 0, []
                for _ in range(50):
                    cursor, sample = self._w.scan(
                        cursor=cursor, match=f"{self.cfg.namespace}:v:{cur}:*", count=1000
                    )
                    if sample or cursor == 0:
                        break
                if sample:
                    mem["bytes_per_key_sample"] = self._w.memory_usage(sample[0])
            return {"memory": mem, "hiredis": self._redis.utils.HIREDIS_AVAILABLE}

        return self._call("reading server status", collect)

    def ping(self) -> bool:
        try:
            return bool(self._r.ping())
        except self._redis.RedisError:
            return False

    def close(self) -> None:
        self._rpool.disconnect()
        self._wpool.disconnect()
