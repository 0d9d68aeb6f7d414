"""Redis Cluster online store: the Redis store's layout and code, with keys placed by hash tags.

URL: `redis+cluster://host:port/0` (or `rediss+cluster://` for TLS): any node of the cluster;
redis-py's `RedisCluster` discovers the others and routes each key to the master of its slot.

Placement (NS = store.namespace):

    {NS}:current, {NS}:history, {NS}:versions         one slot: the pointer switch is one MULTI/EXEC
    NS:meta:<version>                                 the version's metadata (any slot)
    NS:h:<version>:<kind>:{<version>.<bucket>}        bucket hashes: one slot per (version, bucket)
    NS:h:<version>:_mark:{<version>.<bucket>}         marker of the bucket, in the bucket's slot

Why this is consistent across nodes:

* The current-version pointer and the history live in ONE slot (hash tag `{NS}`), so switching
  and rolling back are one MULTI/EXEC on one master, atomic for every reader: a request reads
  the pointer (one key) and then only keys of that version, which is immutable once complete
  (and every value carries its version's tag, checked on read).
* A batch read is one HMGET per bucket touched, pipelined: redis-py's cluster pipeline sends
  the commands of each master in one request, so a read is one round trip per node involved.
* Buckets spread a version over the masters; each bucket's slot also holds its marker, written
  when the version is started. Every chunk write checks the markers of the buckets it touches
  in the same per-node request (EXISTS before HSET on the same connection), and a resumed write
  checks all of them: a master that restarted empty lost its markers, so the loss is noticed
  and the version is written again from scratch, as on a single server whose metadata vanished.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from feature_store.online.redis_store import RedisStore


class _Lazy:
    """A RedisCluster client made on first use: its constructor connects to discover the nodes,
    and opening a store must not (a server starting while the cluster is down serves fallback
    knowledge, as with one Redis). Construction errors surface in the first call, as StoreErrors."""

    def __init__(self, make: Callable[[], Any]):
        self._make, self._made = make, None
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        with self._lock:
            if self._made is None:
                self._made = self._make()
        return getattr(self._made, name)

    def close(self) -> None:
        if self._made is not None:
            self._made.close()


class RedisClusterStore(RedisStore):
    backend = "redis-cluster"
    # RedisCluster reconnects and refreshes the topology by itself, and re-runs a failed node's
    # pipelined commands one by one: a retry on top doubles the wait on a hung master.
    read_retries = 0

    def _client(self, url: str, timeout_s: float, connect_timeout_s: float, retry: Any, **kwargs: Any) -> Any:
        from redis.cluster import RedisCluster

        plain = url.replace("+cluster://", "://", 1)
        return _Lazy(
            lambda: RedisCluster.from_url(
                plain,
                socket_timeout=timeout_s,
                socket_connect_timeout=connect_timeout_s,
                retry=retry,
                **kwargs,
            )
        )

    def _pointer_keys(self, ns: str) -> tuple[str, str, str]:
        return f"{{{ns}}}:current", f"{{{ns}}}:history", f"{{{ns}}}:versions"

    def _bucket_key(self, version: str, kind: str, bucket: int) -> str:
        return f"{self.cfg.namespace}:h:{version}:{kind}:{{{version}.{bucket}}}"

    def _marker_key(self, version: str, bucket: int) -> str:
        return self._bucket_key(version, "_mark", bucket)

    def _markers(self, version: str, buckets: int) -> list[str]:
        return [self._marker_key(version, b) for b in range(buckets)]

    def _server_memory(self) -> dict[str, Any]:
        from redis.cluster import RedisCluster

        per_node = self._w.info("memory", target_nodes=RedisCluster.PRIMARIES)
        nodes = (
            per_node.values() if isinstance(per_node, dict) and "used_memory" not in per_node else [per_node]
        )
        used = sum(int(n.get("used_memory", 0)) for n in nodes)
        return {
            "used_memory": used,
            "used_memory_human": f"{used / 2**20:.2f}M",
            "maxmemory": sum(int(n.get("maxmemory", 0)) for n in nodes),
            "masters": len(list(nodes)),
            "dbsize": self._w.dbsize(target_nodes=RedisCluster.PRIMARIES),
        }
