"""Online stores: versioned entity -> vector lookups for serving (see `base` for the semantics).

`open_store(url)` picks the backend from the URL: a local path -> `LocalStore` (embedded,
file-backed, memory-mapped; the default), `redis://`, `rediss://` (TLS) or `unix://` -> `RedisStore`,
`redis+cluster://` or `rediss+cluster://` (any node) -> `RedisClusterStore`.
"""

from __future__ import annotations

from feature_store.online.base import (
    Counters,
    EntityBatch,
    OnlineStore,
    ReadResult,
    StoreError,
    StoreVersion,
    WriteStats,
)
from llm4msr.config import ConfigError, StoreConfig

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", *CLUSTER_SCHEMES)

__all__ = [
    "Counters",
    "EntityBatch",
    "OnlineStore",
    "ReadResult",
    "StoreError",
    "StoreVersion",
    "WriteStats",
    "open_store",
    "is_redis_url",
]


def is_redis_url(url: str) -> bool:
    return str(url).startswith(REDIS_SCHEMES)


def open_store(url: str | None = None, cfg: StoreConfig | None = None) -> OnlineStore:
    """Open the online store at `url` (default: cfg.url). Opening never writes anything."""
    cfg = cfg or StoreConfig()
    url = str(url or cfg.url)
    if url.startswith(CLUSTER_SCHEMES):
        from feature_store.online.redis_cluster import RedisClusterStore

        return RedisClusterStore(url, cfg)
    if is_redis_url(url):
        from feature_store.online.redis_store import RedisStore

        return RedisStore(url, cfg)
    if "://" in url:
        raise ConfigError(
            f"store URL {url!r}: unknown scheme, expected a local path or redis://, rediss://, unix://, "
            "redis+cluster://, rediss+cluster://"
        )
    from feature_store.online.local import LocalStore

    return LocalStore(url, cfg)
