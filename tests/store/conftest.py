"""Store tests: snapshot factory and a store URL fixture parametrised over every backend."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from feature_store.knowledge_snapshot import KnowledgeRows, knowledge_family, write_snapshot_files
from feature_store.offline_store import OfflineStore

DIM = 16


def make_rows(
    n_users: int, dim: int = DIM, seed: int = 0, n_scenarios: int = 3, generated_at: int | None = None
) -> KnowledgeRows:
    rng = np.random.default_rng(seed)
    kinds = ["scenario"] * n_scenarios + ["user"] * n_users
    ids = [f"s{i}" for i in range(n_scenarios)] + [f"u{i:05d}" for i in range(n_users)]
    n = len(ids)
    gen = int(time.time()) if generated_at is None else generated_at
    return KnowledgeRows(
        kind=kinds,
        entity_id=ids,
        vectors=rng.normal(size=(n, dim)).astype(np.float32),
        prompt_hash=["h"] * n,
        model_id=["test-model"] * n,
        template_version=["t1"] * n,
        generated_at=[gen] * n,
        answer=[None] * n,
    )


def write_snapshot(
    root: Path, rows: KnowledgeRows, snapshot_id: str, dtype: str = "float32", make_current: bool = True
) -> Path:
    """Publish `rows` as snapshot `snapshot_id` in the offline store at `root`; returns its folder."""
    store = OfflineStore(root)
    dim = rows.vectors.shape[1]
    with store.new_version(snapshot_id) as (sid, tmp):
        write_snapshot_files(
            tmp,
            rows,
            {
                "snapshot_id": sid,
                "model_id": "test-model",
                "pooling": "MEAN",
                "knowledge_family": knowledge_family("test-model", "MEAN", dim),
            },
            dtype,
        )
    if make_current:
        store.set_current(snapshot_id)
    return store.path_of(snapshot_id)


def assert_values(store, rows: KnowledgeRows, ids: list[str]) -> None:  # noqa: ANN001
    """`store` returns exactly the snapshot's vectors (through float16) for user `ids`."""
    r = store.read("user", ids)
    assert r.found.all(), r
    pos = {e: i for i, e in enumerate(rows.entity_id)}
    np.testing.assert_array_equal(
        r.vectors, rows.vectors[[pos[i] for i in ids]].astype(np.float16).astype(np.float32)
    )


@pytest.fixture
def snapshot_factory(tmp_path: Path) -> Callable[..., tuple[Path, KnowledgeRows]]:
    root = tmp_path / "offline"

    def make(snapshot_id: str, n_users: int = 50, seed: int = 0, **kw: object) -> tuple[Path, KnowledgeRows]:
        dtype = str(kw.pop("dtype", "float32"))
        rows = make_rows(n_users, seed=seed, **kw)  # type: ignore[arg-type]
        return write_snapshot(root, rows, snapshot_id, dtype=dtype), rows

    return make


@pytest.fixture(params=["local", "redis", "cluster"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each backend: local files, one redis-server, a 3-master Redis Cluster (emptied per test)."""
    if request.param == "local":
        return str(tmp_path / "online")
    if request.param == "cluster":
        return request.getfixturevalue("redis_cluster").url
    return request.getfixturevalue("redis_server").url
