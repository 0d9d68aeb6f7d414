"""The online-store contract (architecture.md, contract 3): import from here.

Implementation lives in the `feature_store.online` package (base interface, `local` and `redis`
backends, value codec); this module re-exports the public names.
"""

from feature_store.online import (
    Counters,
    EntityBatch,
    OnlineStore,
    ReadResult,
    StoreError,
    StoreVersion,
    WriteStats,
    is_redis_url,
    open_store,
)

__all__ = [
    "Counters",
    "EntityBatch",
    "OnlineStore",
    "ReadResult",
    "StoreError",
    "StoreVersion",
    "WriteStats",
    "is_redis_url",
    "open_store",
]
