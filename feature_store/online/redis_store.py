"""Redis online store.

Keys (NS = StoreConfig.namespace):

    NS:h:<version>:<kind>:<bucket>      hash: entity id -> value (codec header + float16/float32 payload)
    NS:meta:<version>                   hash: StoreVersion fields (counts as JSON), buckets, progress:<kind>
    NS:versions                         set of version ids ever written (pruned when meta expires)
    NS:current                          the current version id (the pointer)
    NS:history                          list of previously current ids, oldest first (rollback)

Each (version, kind) is split into `buckets` hashes (fixed when the version is first written:
ceil(largest kind / redis_bucket_fields), recorded in the meta hash); an entity lives in bucket
crc32(utf-8 id) % buckets. So a batch read is one HMGET per bucket touched (one command when
buckets == 1), and expiring, keeping or dropping a whole version is O(buckets) commands, never a
keyspace SCAN; no hash grows so big that freeing it on expiry stalls the server for long.

Writes: per chunk of `write_chunk` id-sorted entities, one MULTI/EXEC with one HSET (flat
field/value arguments) per bucket plus the new `progress:<kind>`, so a chunk and its progress land
together and a resumed materialization skips exactly what is there (HSET overwrites: re-writing a
chunk is idempotent). Each transaction first asks whether the version's metadata still exists
(HEXISTS meta counts): a server that restarted empty while the writer retried answers no, and the
version is discarded and written again from scratch instead of being continued without metadata.
Commands are packed by hiredis and one chunk is in flight (the next one is encoded while the
server executes the previous); unconfirmed chunks are re-sent after a connection error, each
retried `retries` times with exponential backoff. The pointer and
the history switch in one MULTI/EXEC after the version has been verified; then the previous
version's keys get EXPIRE old_version_ttl_seconds (meta first, buckets a minute later than meta,
so a version whose metadata still exists always has its data); a version brought back by
rollback is PERSISTed (meta first) before the pointer moves to it.

Reads: HMGET(s) on a pooled hiredis connection, all sent in one socket write, socket timeouts
`timeout_ms`, at most one reconnect attempt; the values are decoded in bucket order and put back
in request order with one numpy row gather; the pointer, the metadata and the bucket count are
cached for `pointer_cache_ms`.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from feature_store.online import codec, resp_values
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


def bucket_of(entity_ids: Sequence[str], buckets: int) -> np.ndarray:
    """Bucket index (int64) of each id: crc32 of its UTF-8 bytes modulo `buckets` (stable across
    processes and languages, unlike Python's hash())."""
    crcs = map(zlib.crc32, map(str.encode, entity_ids))
    return np.fromiter(crcs, dtype=np.int64, count=len(entity_ids)) % buckets


def value_location(namespace: str, version: str, kind: str, entity_id: str, buckets: int) -> tuple[str, str]:
    """(hash key, field) holding one entity's value; for tools and tests that touch values directly."""
    b = int(bucket_of([entity_id], buckets)[0])
    return f"{namespace}:h:{version}:{kind}:{b}", entity_id


def pack_hmget(key: str, fields: Sequence[str], pack: Callable[[tuple[Any, ...]], bytes]) -> bytes:
    """RESP of HMGET key fields...: with ASCII ids of one length (the usual case) two C-level string
    joins, ~2x cheaper than packing argument by argument; anything else goes through `pack`."""
    if fields:
        lengths = set(map(len, fields))
        if len(lengths) == 1:
            width = lengths.pop()
            body = f"\r\n${width}\r\n".join(fields)
            kb = key.encode("utf-8")
            if body.isascii():
                head = b"*%d\r\n$5\r\nHMGET\r\n$%d\r\n%s\r\n$%d\r\n" % (len(fields) + 2, len(kb), kb, width)
                return head + body.encode("ascii") + b"\r\n"
    return pack(("HMGET", key, *fields))


def _packer() -> Callable[[tuple[Any, ...]], bytes]:
    """RESP encoder of one command: hiredis' (C) when installed, redis-py's otherwise."""
    try:
        import hiredis

        return hiredis.pack_command
    except ImportError:  # pragma: no cover - hiredis is a pinned dependency
        from redis._parsers.encoders import Encoder
        from redis.connection import PythonRespSerializer

        ser = PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode)
        return lambda args: b"".join(bytes(p) for p in ser.pack(*args))


class RedisStore(OnlineStore):
    backend = "redis"

    def __init__(self, url: str, cfg: StoreConfig):
        import redis
        from redis.backoff import NoBackoff
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
        # Glob characters in the namespace would make the SCAN pattern of drop_version match other keys.
        ns = check_id(cfg.namespace, "store.namespace", self.redacted_url)
        self._k_current, self._k_history, self._k_versions = (
            f"{ns}:current",
            f"{ns}:history",
            f"{ns}:versions",
        )
        self._buckets: dict[str, int] = {}  # version -> bucket count (immutable once written)
        self._pack = _packer()
        self._wconn: Any = None  # write connection held while a version is being written
        self._inflight: list[tuple[str, list[bytes]]] = []  # chunks sent, replies not read yet
        self._damaged_warned: set[str] = set()

    # ------------------------------------------------------------------ helpers
    def _meta_key(self, version: str) -> str:
        return f"{self.cfg.namespace}:meta:{check_id(version, 'version', self.redacted_url)}"

    def _bucket_prefix(self, version: str, kind: str) -> str:
        return f"{self.cfg.namespace}:h:{version}:{kind}:"

    def _data_keys(self, version: str, kinds: Sequence[str], buckets: int) -> list[str]:
        return [self._bucket_prefix(version, k) + str(b) for k in kinds for b in range(buckets)]

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

    def _call(self, what: str, fn: Callable[[], T], *, retries: int = 0) -> T:
        """Run a backend call; retry connection/timeout errors with backoff; raise StoreError."""
        attempt = 0
        while True:
            try:
                return fn()
            except self._redis.AuthenticationError as exc:  # a ConnectionError, but not a retryable one
                raise StoreError(
                    f"redis at {self.redacted_url} refused the credentials while {what}: {exc} (the password "
                    f"comes from the URL or the environment variable {self.cfg.password_env}, "
                    "store.password_env)"
                ) from exc
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

    def _version_keys(self, version: str) -> list[str]:
        """Data keys of `version` from its metadata (kinds x buckets); SCAN only without metadata."""
        info = self.version_info(version)
        if info is not None:
            return self._data_keys(version, sorted(info.counts), self.buckets(version))
        return self._scan(f"{self.cfg.namespace}:h:{check_id(version, 'version', self.redacted_url)}:*")

    def _scan(self, pattern: str) -> list[str]:
        """All keys matching `pattern` (SCAN: O(keyspace), for maintenance, never the read path)."""
        keys: list[str] = []
        cursor = 0
        while True:
            cursor, batch = self._w.scan(cursor=cursor, match=pattern, count=SCAN_COUNT)
            keys += [k.decode() for k in batch]
            if cursor == 0:
                return keys

    # ------------------------------------------------------------------ metadata
    def _read_pointer(self) -> str | None:
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
    def _plan_read(
        self, version: StoreVersion, kind: str, ids: Sequence[str]
    ) -> tuple[list[bytes], list[int], np.ndarray | None]:
        """(packed HMGETs, fields per command, `order`): one HMGET per bucket touched; the values
        come back grouped by bucket, values[k] belonging to ids[order[k]] (order None: they are
        already in request order)."""
        fields = list(map(str, ids))
        prefix = self._bucket_prefix(version.version, kind)
        nb = self.buckets(version.version)
        if nb == 1:
            return [pack_hmget(prefix + "0", fields, self._pack)], [len(fields)], None
        bucket = bucket_of(fields, nb)
        order = np.argsort(bucket, kind="stable")
        sorted_b = bucket[order]
        cuts = [0, *(np.flatnonzero(np.diff(sorted_b)) + 1).tolist(), len(fields)]
        in_order = np.asarray(fields, dtype=object)[order].tolist()
        packed = [
            pack_hmget(prefix + str(int(sorted_b[a])), in_order[a:b], self._pack)
            for a, b in itertools.pairwise(cuts)
        ]
        return packed, [b - a for a, b in itertools.pairwise(cuts)], order

    def _read_raw(self, version: StoreVersion, kind: str, ids: Sequence[str]) -> list[bytes | None]:
        if not ids:
            return []
        packed, _, order = self._plan_read(version, kind, ids)
        got = list(itertools.chain.from_iterable(self._roundtrip(packed)))
        if order is None:
            return got
        out: list[bytes | None] = [None] * len(got)
        for i, v in zip(order.tolist(), got, strict=True):
            out[i] = v
        return out

    def _read_decoded(self, version: StoreVersion, kind: str, ids: Sequence[str]) -> codec.Decoded:
        """The request path: values received into one buffer and decoded from there (resp_values);
        any absent or odd-sized value takes the general path (hiredis replies, codec.decode_values)."""
        layout = version.layout
        packed, counts, order = self._plan_read(version, kind, ids)
        views, replies = self._roundtrip(
            packed, lambda sock: resp_values.read_values(sock, counts, layout.size)
        )
        now = time.time()
        n = len(ids)
        if views is None:
            got = list(itertools.chain.from_iterable(replies or []))
            return codec.decode_values(layout, got, self.cfg.max_age_seconds, now, order)
        if order is None:
            recs = views[0]
        else:  # one copy: each command's values scattered to their rows in request order
            recs = np.empty(n, dtype=views[0].dtype)
            start = 0
            for v in views:
                recs[order[start : start + len(v)]] = v
                start += len(v)
        return codec.decode_array(
            layout, recs.view(layout.rec), np.ones(n, dtype=bool), self.cfg.max_age_seconds, now
        )

    # ------------------------------------------------------------------ writing
    def _begin_version(self, meta: StoreVersion) -> dict[str, int]:
        key = self._meta_key(meta.version)
        buckets = max(1, math.ceil(max(meta.counts.values()) / self.cfg.redis_bucket_fields))

        def begin() -> dict[str, int]:
            existing = self._w.hgetall(key)
            if existing and self._parse_meta(meta.version, existing) is not None:
                done = {k.decode()[9:]: int(v) for k, v in existing.items() if k.startswith(b"progress:")}
                self._buckets[meta.version] = int(existing.get(b"buckets", 1))
                log.info("redis store: resuming version %s (%s)", meta.version, done)
                return done
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
                for a in range(0, len(orphans), 500):
                    pipe.unlink(*orphans[a : a + 500])
                pipe.delete(key)
                pipe.execute()
            fields = {
                k: ("" if v is None else json.dumps(v) if k == "counts" else str(v))
                for k, v in meta.to_dict().items()
            }
            fields["buckets"] = str(buckets)
            pipe = self._w.pipeline(transaction=True)
            pipe.hset(key, mapping=fields)
            pipe.sadd(self._k_versions, meta.version)
            pipe.execute()
            self._buckets[meta.version] = buckets
            return {}

        return self._call(f"starting version {meta.version}", begin, retries=self.cfg.retries)

    def _begin_kind(self, version: str, kind: str, batch: EntityBatch, layout: codec.Layout) -> None:
        return None

    def _write_chunk(self, version: str, kind: str, start: int, ids: np.ndarray, recs: np.ndarray) -> None:
        prefix = self._bucket_prefix(version, kind)
        nb = self.buckets(version)
        id_list = ids.tolist()
        if nb == 1:
            groups = [(0, id_list, codec.split_records(recs))]
        else:
            bucket = bucket_of(id_list, nb)
            order = np.argsort(bucket, kind="stable")
            sorted_b = bucket[order]
            cuts = [0, *(np.flatnonzero(np.diff(sorted_b)) + 1).tolist(), len(id_list)]
            ids_o = ids[order].tolist()
            vals_o = codec.split_records(recs[order])
            groups = [
                (int(sorted_b[a]), ids_o[a:b], vals_o[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)
            ]
        # Packed here (hiredis, in C) rather than through redis-py's pipeline, whose per-argument
        # Python checks cost more than the rest of the write path together. The first command of
        # the transaction tells whether the version's metadata still exists (_check_exec).
        packed = [self._pack(("MULTI",)), self._pack(("HEXISTS", self._meta_key(version), "counts"))]
        for b, fields, values in groups:
            flat: list[Any] = [None] * (2 + 2 * len(fields))
            flat[0], flat[1] = "HSET", prefix + str(b)
            flat[2::2] = fields
            flat[3::2] = values
            packed.append(self._pack(tuple(flat)))
        packed.append(self._pack(("HSET", self._meta_key(version), f"progress:{kind}", start + len(ids))))
        packed.append(self._pack(("EXEC",)))

        what = f"writing version {version} {kind} entities {start}..{start + len(ids)}"
        self._send_chunk(what, packed)

    # One chunk in flight: chunk i+1 is encoded (client CPU) while the server executes chunk i, and
    # chunk i's replies are read after chunk i+1 is sent. Each chunk is its own MULTI/EXEC with its
    # progress, so what the server holds is always a consistent prefix; on any error the unconfirmed
    # chunks are re-sent synchronously (HSET overwrites: idempotent) with the usual retries.
    def _send_chunk(self, what: str, packed: list[bytes]) -> None:
        self._inflight.append((what, packed))  # before sending: a failed send must re-send it too
        try:
            if self._wconn is None:
                self._wconn = self._wpool.get_connection()
            self._wconn.send_packed_command(packed, check_health=False)
            while len(self._inflight) > 1:
                self._read_chunk_replies(*self._inflight[0])
                self._inflight.pop(0)
        except (self._redis.ConnectionError, self._redis.TimeoutError) as exc:
            self._drop_wconn()
            self._resend_inflight(exc)
        except self._redis.RedisError as exc:
            self._drop_wconn()
            self._inflight = []
            raise StoreError(f"redis at {self.redacted_url}: {what} failed: {exc}") from exc
        except BaseException:  # interrupted: what reached the server is a consistent prefix
            self._drop_wconn()
            self._inflight = []
            raise

    def _read_chunk_replies(self, what: str, packed: list[bytes]) -> None:
        conn = self._wconn
        assert conn is not None
        for _ in range(len(packed) - 1):  # OK, QUEUED...
            conn.read_response()
        self._check_exec(what, conn.read_response())

    def _check_exec(self, what: str, result: Any) -> None:
        """EXEC's reply to a chunk: aborted, or the metadata was gone when the chunk landed (its
        HEXISTS said 0: the server lost the version, e.g. restarted without persistence)."""
        if result is None:
            raise self._redis.RedisError("transaction aborted")
        if not result or result[0] != 1:
            raise VersionLostError(f"the server no longer holds the metadata of the version ({what})")

    def _drop_wconn(self) -> None:
        if self._wconn is not None:
            self._wconn.disconnect()
            self._wpool.release(self._wconn)
            self._wconn = None

    def _resend_inflight(self, exc: BaseException) -> None:
        pending, self._inflight = self._inflight, []
        log.warning(
            "redis %s: write connection failed (%s); re-sending %d chunk(s)",
            self.redacted_url,
            exc,
            len(pending),
        )
        for what, packed in pending:
            result = self._call(
                what, lambda packed=packed: self._transaction(packed), retries=self.cfg.retries
            )
            self._check_exec(what, result)

    def _flush_writes(self) -> None:
        """Confirm the chunk still in flight and give the write connection back."""
        if self._wconn is None:
            self._inflight = []
            return
        try:
            while self._inflight:
                self._read_chunk_replies(*self._inflight[0])
                self._inflight.pop(0)
        except (self._redis.ConnectionError, self._redis.TimeoutError) as exc:
            self._drop_wconn()
            self._resend_inflight(exc)
        except self._redis.RedisError as exc:
            what = self._inflight[0][0] if self._inflight else "writing"
            self._drop_wconn()
            self._inflight = []
            raise StoreError(f"redis at {self.redacted_url}: {what} failed: {exc}") from exc
        except BaseException:
            self._drop_wconn()
            self._inflight = []
            raise
        if self._wconn is not None:
            self._wpool.release(self._wconn)
            self._wconn = None

    def _roundtrip(self, packed: list[bytes], receive: Callable[[Any], T] | None = None) -> T | list[Any]:
        """Read path: send pre-packed commands in one round trip on a pooled read connection and
        return their replies (no per-argument Python work), or `receive(socket)` when given (the
        buffered value reader, resp_values). A dropped connection (server restarted) is retried
        once on a fresh one; a timeout is not retried (the caller reports missing)."""
        for attempt in (0, 1):
            conn = self._rpool.get_connection()
            try:
                # one buffer, one sendall: redis-py would write each command separately, and every
                # write wakes the server for a partial batch (a syscall and a context switch each)
                conn.send_packed_command(
                    [b"".join(packed)] if len(packed) > 1 else packed, check_health=False
                )
                if receive is None:
                    return [conn.read_response() for _ in packed]
                return receive(conn._sock)
            except (self._redis.ConnectionError, ConnectionError) as exc:
                conn.disconnect()
                if attempt:
                    if isinstance(exc, self._redis.ConnectionError):
                        raise
                    raise self._redis.ConnectionError(str(exc)) from exc
            except TimeoutError as exc:  # the socket's own timeout (resp_values reads the socket)
                conn.disconnect()
                raise self._redis.TimeoutError(f"timeout reading from redis: {exc}") from exc
            except resp_values.ReplyError as exc:
                conn.disconnect()
                raise self._redis.ResponseError(str(exc)) from exc
            except BaseException:
                conn.disconnect()
                raise
            finally:
                self._rpool.release(conn)
        raise AssertionError("unreachable")

    def _transaction(self, packed: list[bytes]) -> list[Any]:
        """Send pre-packed MULTI ... EXEC commands on one pooled write connection; read every reply.
        Any failure drops the connection (its unread replies would confuse the next user)."""
        conn = self._wpool.get_connection()
        try:
            conn.send_packed_command(packed, check_health=False)
            replies = [conn.read_response() for _ in range(len(packed) - 1)]  # OK, QUEUED...
            result = conn.read_response()  # EXEC: the list of replies, or an error (raised)
        except BaseException:
            conn.disconnect()
            raise
        finally:
            self._wpool.release(conn)
        if result is None:
            raise self._redis.RedisError(f"transaction aborted (replies {replies[:3]}...)")
        return result

    def _end_writes(self, version: str) -> None:
        self._flush_writes()

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
        if self._read_pointer() == version:
            raise StoreError(f"version {version} is current; roll back or switch before dropping it")

        def drop() -> None:
            keys = self._version_keys(version)
            pipe = self._w.pipeline(transaction=False)
            for a in range(0, len(keys), 500):
                pipe.unlink(*keys[a : a + 500])
            pipe.delete(self._meta_key(version))
            pipe.srem(self._k_versions, version)
            pipe.execute()
            self._buckets.pop(version, None)

        self._call(f"dropping version {version}", drop)

    # ------------------------------------------------------------------ pointer
    def _switch(self, version: str, previous: str | None, history: list[str]) -> None:
        ttl = self.cfg.old_version_ttl_seconds
        meta = self._meta_key(version)

        def persist() -> None:  # a rolled-back-to version may be expiring: keep it (meta first)
            if self._w.ttl(meta) >= 0 or self.version_info(version).retired_at:
                self._w.persist(meta)
                pipe = self._w.pipeline(transaction=False)
                for k in self._version_keys(version):
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
            current = self._read_pointer()
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
            info = self._w.info("memory")
            mem: dict[str, Any] = {k: info.get(k) for k in ("used_memory", "used_memory_human", "maxmemory")}
            mem["dbsize"] = self._w.dbsize()
            cur = self._read_pointer()
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
        self._drop_wconn()
        self._inflight = []
        self._rpool.disconnect()
        self._wpool.disconnect()
