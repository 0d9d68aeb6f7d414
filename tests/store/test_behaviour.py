"""One behaviour suite, run against both backends (local files and a real redis-server)."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from feature_store.materialize import materialize
from feature_store.online import EntityBatch, StoreError, open_store
from feature_store.online.codec import Layout, encode, split_records
from llm4msr.config import StoreConfig


def expected(rows, ids: list[str]) -> np.ndarray:  # noqa: ANN001
    pos = {e: i for i, e in enumerate(rows.entity_id)}
    return rows.vectors[[pos[i] for i in ids]].astype(np.float16).astype(np.float32)


def put_raw(url: str, cfg: StoreConfig, version: str, kind: str, entity_id: str, value: bytes) -> None:
    """Overwrite one stored value in place, behind the store's back (corruption injection)."""
    if "://" in url:  # Redis or Redis Cluster
        store = open_store(url, cfg)
        key, fld = store.value_location(version, kind, entity_id)
        assert store._w.hexists(key, fld), "corruption must replace an existing value"
        store._w.hset(key, fld, value)
        store.close()
        return
    d = Path(url) / "versions" / version
    ids = np.load(d / f"{kind}.ids.npy")
    row = int(np.flatnonzero(ids == entity_id)[0])
    size = (d / f"{kind}.values.bin").stat().st_size // len(ids)
    assert len(value) == size, "the local store has fixed-size records"
    with open(d / f"{kind}.values.bin", "r+b") as fh:
        fh.seek(row * size)
        fh.write(value)


def test_empty_store_reads_missing_without_raising(store_url: str) -> None:
    store = open_store(store_url, StoreConfig())
    assert store.current() is None
    r = store.read("user", ["u1", "u2"])
    assert r.found.tolist() == [False, False] and r.version is None and r.n_missing == 2
    with pytest.raises(StoreError, match="no previous version"):
        store.rollback()
    store.close()


def test_materialize_then_read_exact_values(store_url: str, snapshot_factory) -> None:  # noqa: ANN001
    snap, rows = snapshot_factory("v1", n_users=40)
    cfg = StoreConfig(write_chunk=7, verify_sample=10, pointer_cache_ms=0)
    report = materialize(snap, store_url, cfg)
    assert report.version == "v1" and report.counts == {"scenario": 3, "user": 40}
    assert report.keys_written == 43 and report.verified["checksums_verified"] == 13
    store = open_store(store_url, cfg)
    cur = store.current()
    assert cur is not None and cur.version == "v1" and cur.dimension == 16 and cur.dtype == "float16"
    assert cur.knowledge_family == json.loads((snap / "manifest.json").read_text())["knowledge_family"]
    ids = ["u00003", "nobody", "u00039", "u00000"]
    r = store.read("user", ids)
    assert r.found.tolist() == [True, False, True, True] and r.version == "v1"
    assert r.vectors.dtype == np.float32 and r.vectors.shape == (4, 16)
    np.testing.assert_array_equal(r.vectors[[0, 2, 3]], expected(rows, ["u00003", "u00039", "u00000"]))
    assert not r.vectors[1].any() and r.n_missing == 1
    s = store.read("scenario", ["s2", "s0"])
    np.testing.assert_array_equal(s.vectors, expected(rows, ["s2", "s0"]))
    assert store.read("user", []).vectors.shape == (0, 16)
    c = store.counters.as_dict()
    assert c["reads"] == 3 and c["keys"] == 6 and c["found"] == 5 and c["missing"] == 1
    status = store.status()
    assert status["current"]["version"] == "v1" and status["age_seconds"] >= 0 and status["memory"]
    store.close()


def test_float32_values_and_idempotent_rerun(store_url: str, snapshot_factory) -> None:  # noqa: ANN001
    snap, rows = snapshot_factory("v1", n_users=10)
    cfg = StoreConfig(value_dtype="float32", pointer_cache_ms=0)
    materialize(snap, store_url, cfg)
    again = materialize(snap, store_url, cfg)
    assert again.already_current and again.keys_written == 0
    store = open_store(store_url, cfg)
    r = store.read("user", ["u00004"])
    np.testing.assert_array_equal(r.vectors[0], rows.vectors[rows.entity_id.index("u00004")])


def test_switch_and_rollback(store_url: str, snapshot_factory) -> None:  # noqa: ANN001
    cfg = StoreConfig(pointer_cache_ms=0, old_version_ttl_seconds=3600)
    snap1, rows1 = snapshot_factory("v1", seed=1)
    snap2, rows2 = snapshot_factory("v2", seed=2)
    store = open_store(store_url, cfg)
    materialize(snap1, store, cfg)
    report = materialize(snap2, store, cfg)
    assert report.previous == "v1" and store.current().version == "v2"
    np.testing.assert_array_equal(store.read("user", ["u00001"]).vectors, expected(rows2, ["u00001"]))
    assert store.history() == ["v1"]
    assert store.version_info("v1").retired_at is not None
    assert store.rollback() == "v1"
    assert store.current().version == "v1" and store.version_info("v1").retired_at is None
    r = store.read("user", ["u00001"])
    assert r.version == "v1"
    np.testing.assert_array_equal(r.vectors, expected(rows1, ["u00001"]))
    with pytest.raises(StoreError, match="no previous version"):
        store.rollback()
    store.set_current("v2")  # forward again: v2 is still held
    assert store.current().version == "v2" and store.history() == ["v1"]
    store.close()


def test_pointer_cache_bounds_staleness_of_the_switch(store_url: str, snapshot_factory) -> None:  # noqa: ANN001
    cfg = StoreConfig(pointer_cache_ms=300)
    snap1, _ = snapshot_factory("v1", seed=1)
    snap2, _ = snapshot_factory("v2", seed=2)
    materialize(snap1, store_url, cfg)
    reader = open_store(store_url, cfg)
    assert reader.read("user", ["u00001"]).version == "v1"
    materialize(snap2, store_url, cfg)  # another process switches the pointer
    time.sleep(0.35)
    assert reader.read("user", ["u00001"]).version == "v2"


def test_interrupted_write_is_invisible_and_resumes(store_url: str, snapshot_factory) -> None:  # noqa: ANN001
    cfg = StoreConfig(write_chunk=5, pointer_cache_ms=0)
    snap1, rows1 = snapshot_factory("v1", n_users=20, seed=1)
    snap2, rows2 = snapshot_factory("v2", n_users=60, seed=2)
    materialize(snap1, store_url, cfg)

    def boom(kind: str, chunk: int, n_chunks: int) -> None:
        if kind == "user" and chunk == 4:
            raise KeyboardInterrupt("simulated interruption")

    with pytest.raises(KeyboardInterrupt):
        materialize(snap2, store_url, cfg, on_chunk=boom)
    store = open_store(store_url, cfg)
    assert store.current().version == "v1"
    assert store.version_info("v2").status == "writing"
    r = store.read("user", ["u00001", "u00050"])  # v2-only ids are not visible
    assert r.version == "v1" and r.found.tolist() == [True, False]
    with pytest.raises(StoreError, match="not complete"):
        store.set_current("v2")
    report = materialize(snap2, store_url, cfg)
    assert report.resumed and report.keys_skipped >= 20 and report.keys_written + report.keys_skipped == 63
    ids = [f"u{i:05d}" for i in range(60)]
    r = store.read("user", ids)
    assert r.found.all() and r.version == "v2"
    np.testing.assert_array_equal(r.vectors, expected(rows2, ids))


def test_stale_values_are_missing(store_url: str, snapshot_factory) -> None:  # noqa: ANN001
    old = int(time.time()) - 7200
    snap, _ = snapshot_factory("v1", n_users=5, generated_at=old)
    materialize(snap, store_url, StoreConfig())
    fresh = open_store(store_url, StoreConfig(max_age_seconds=3 * 3600)).read("user", ["u00001"])
    assert fresh.found.all() and fresh.n_stale == 0
    store = open_store(store_url, StoreConfig(max_age_seconds=3600))
    r = store.read("user", ["u00001", "u00002"])
    assert not r.found.any() and r.n_stale == 2 and not r.vectors.any()
    assert store.counters.as_dict()["stale"] == 2


def test_corrupt_values_count_as_malformed(store_url: str, snapshot_factory) -> None:  # noqa: ANN001
    cfg = StoreConfig(pointer_cache_ms=0)
    snap, _ = snapshot_factory("v1", n_users=8)
    materialize(snap, store_url, cfg)
    good = Layout("v1", 16, "float16")
    vec = np.ones((1, 16), dtype=np.float32)
    now = np.array([int(time.time())])
    wrong_version = split_records(encode(Layout("v0", 16, "float16"), vec, now))[0]
    f32_same_size = split_records(encode(Layout("v1", 8, "float32"), vec[:, :8], now))[0]  # same byte length
    wrong_dim_field = bytearray(split_records(encode(good, vec, now))[0])
    wrong_dim_field[4:8] = struct.pack("<I", 15)
    nan_payload = split_records(encode(good, np.full((1, 16), np.nan), now))[0]
    bad_magic = b"XX" + split_records(encode(good, vec, now))[0][2:]
    for i, value in enumerate([wrong_version, f32_same_size, bytes(wrong_dim_field), nan_payload, bad_magic]):
        assert len(value) == good.size
        put_raw(store_url, cfg, "v1", "user", f"u0000{i}", value)
    store = open_store(store_url, cfg)
    ids = [f"u0000{i}" for i in range(7)]
    r = store.read("user", ids)
    assert r.found.tolist() == [False] * 5 + [True, True]
    assert r.n_malformed == 5 and r.n_missing == 0 and not r.vectors[:5].any()
    assert store.counters.as_dict()["malformed"] == 5


def test_bad_names_and_unknown_version(store_url: str) -> None:
    store = open_store(store_url, StoreConfig())
    with pytest.raises(StoreError, match="not found"):
        store.set_current("nope")
    with pytest.raises(ValueError, match="version 'a:b' is not valid"):
        store.write_version("a:b", knowledge_family="f", snapshot_id="a:b", entities={})


def test_redis_buckets_expiry_and_count_verification(redis_server, snapshot_factory) -> None:  # noqa: ANN001
    """Redis-only layout checks: many hash buckets per kind, O(buckets) expire/persist on switch and
    rollback, and verification that notices a missing value."""
    from feature_store.online.redis_store import RedisStore, bucket_of

    cfg = StoreConfig(write_chunk=9, pointer_cache_ms=0, redis_bucket_fields=7, old_version_ttl_seconds=3600)
    snap1, rows1 = snapshot_factory("v1", n_users=60, seed=1)
    snap2, rows2 = snapshot_factory("v2", n_users=60, seed=2)
    store = RedisStore(redis_server.url, cfg)
    materialize(snap1, store, cfg)
    assert store.buckets("v1") == 9  # ceil(60 / 7)
    client = redis_server.client()
    keys = sorted(k.decode() for k in client.keys(f"{cfg.namespace}:h:v1:*"))
    assert len([k for k in keys if ":user:" in k]) == 9  # one bucket count per version, for every kind
    assert 1 <= len([k for k in keys if ":scenario:" in k]) <= 3
    ids = [f"u{i:05d}" for i in range(60)]
    assert sum(client.hlen(f"{cfg.namespace}:h:v1:user:{b}") for b in range(9)) == 60
    b = bucket_of(ids, 9)
    assert len(set(b.tolist())) > 1
    assert client.hexists(f"{cfg.namespace}:h:v1:user:{int(b[5])}", ids[5])
    shuffled = ids[::-1] + ["ghost"]
    r = store.read("user", shuffled)
    assert r.found.tolist() == [True] * 60 + [False] and r.n_missing == 1
    np.testing.assert_array_equal(r.vectors[:60], expected(rows1, shuffled[:60]))

    materialize(snap2, store, cfg)
    assert all(0 < client.ttl(k) <= 3600 + 60 for k in keys)  # retired v1: every bucket expires
    assert client.ttl(f"{cfg.namespace}:meta:v1") <= 3600
    assert all(client.ttl(k) == -1 for k in client.keys(f"{cfg.namespace}:h:v2:*"))
    assert store.rollback() == "v1"
    assert all(client.ttl(k) == -1 for k in keys + [f"{cfg.namespace}:meta:v1"])  # kept again
    np.testing.assert_array_equal(store.read("user", ids).vectors, expected(rows1, ids))

    client.hdel(f"{cfg.namespace}:h:v2:user:{int(b[7])}", ids[7])  # a value lost behind our back
    entities = {"user": EntityBatch(np.asarray(ids), rows2.vectors[3:], np.zeros(60, dtype=np.int64))}
    with pytest.raises(StoreError, match=r"kind 'user': 59 values stored, metadata says 60"):
        store.verify_version("v2", entities, sample=0)
    store.drop_version("v2")
    assert not client.keys(f"{cfg.namespace}:h:v2:*") and store.version_info("v2") is None
    store.close()
