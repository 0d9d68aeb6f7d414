"""The read path: value decoding (present, absent, wrong length, malformed, stale) and exact id
matches on both backends, against the plain computation."""

from __future__ import annotations

import time

import numpy as np
import pytest

from feature_store.online import EntityBatch, open_store
from feature_store.online.codec import Layout, decode_values, encode, split_records
from llm4msr.config import StoreConfig


@pytest.mark.parametrize("damage", ["none", "absent", "short", "malformed"])
def test_decode_values_counts_each_kind_of_damage(damage: str) -> None:
    layout = Layout("v1", 8, "float16")
    rng = np.random.default_rng(3)
    n = 50
    now = int(time.time())
    gen = np.full(n, now)
    gen[7] = now - 1000  # stale with max_age 100
    vecs = rng.normal(size=(n, 8)).astype(np.float32)
    values: list[bytes | None] = list(split_records(encode(layout, vecs, gen)))
    if damage == "absent":
        values[3] = None
    elif damage == "short":
        values[3] = values[3][:-2]
    elif damage == "malformed":
        values[3] = b"XX" + values[3][2:]
    got = decode_values(layout, values, 100, now)
    bad = {7} | ({3} if damage != "none" else set())
    assert got.found.tolist() == [i not in bad for i in range(n)]
    want = vecs.astype(np.float16).astype(np.float32)
    want[sorted(bad)] = 0.0
    np.testing.assert_array_equal(got.vectors, want)
    assert got.stale == 1
    assert (got.missing, got.malformed) == {
        "none": (0, 0),
        "absent": (1, 0),
        "short": (0, 1),
        "malformed": (0, 1),
    }[damage]


@pytest.mark.parametrize("backend", ["local", "redis"])
def test_reads_match_exact_ids_only(backend: str, request, tmp_path) -> None:  # noqa: ANN001
    """Ids of mixed lengths and alphabets; queries that are prefixes, extensions or truncations of
    stored ids must not match."""
    cfg = StoreConfig(pointer_cache_ms=0, namespace="ex", redis_bucket_fields=4)
    url = str(tmp_path / "online") if backend == "local" else request.getfixturevalue("redis_server").url
    ids = np.array(["a", "ab", "abc", "é", "éé", "zzzz", "u1", "u10", "u100"])
    vecs = np.arange(len(ids) * 4, dtype=np.float32).reshape(-1, 4)
    store = open_store(url, cfg)
    batch = EntityBatch(ids, vecs, np.full(len(ids), int(time.time())))
    store.write_version("v1", knowledge_family="f", snapshot_id="v1", entities={"user": batch})
    store.verify_version("v1", {"user": batch}, sample=len(ids))
    store.set_current("v1")
    q = ["u100", "abcd", "zzzzz", "éé", "u1000", "", "a", "é", "zzz", "u10"] * 5
    r = store.read("user", q)
    assert r.found.tolist() == [True, False, False, True, False, False, True, True, False, True] * 5
    pos = {e: i for i, e in enumerate(ids.tolist())}
    for i in np.flatnonzero(r.found):
        np.testing.assert_array_equal(r.vectors[i], vecs[pos[q[i]]])
    assert r.n_missing == 25
    store.close()


def test_redis_reads_with_absent_and_odd_values(redis_server, tmp_path) -> None:  # noqa: ANN001
    """Against the real server: the last id of a bucket absent, or a value overwritten with another
    length, still reads right (found mask, vectors) and quickly."""
    import redis as redis_py

    cfg = StoreConfig(pointer_cache_ms=0, namespace="rv", redis_bucket_fields=16, timeout_ms=2000)
    ids = np.array([f"u{i:04d}" for i in range(64)])
    vecs = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    store = open_store(redis_server.url, cfg)
    batch = EntityBatch(ids, vecs, np.full(64, int(time.time())))
    store.write_version("v1", knowledge_family="f", snapshot_id="v1", entities={"user": batch})
    store.verify_version("v1", {"user": batch}, sample=8)
    store.set_current("v1")
    q = [*ids[::-1].tolist(), "nobody"]  # the absent id is the last field of its bucket's HMGET
    r = store.read("user", q)
    assert r.found.tolist() == [True] * 64 + [False]
    np.testing.assert_allclose(r.vectors[:64], vecs[::-1], rtol=1e-3, atol=1e-3)
    key, field = store.value_location("v1", "user", "u0005")
    redis_py.Redis.from_url(redis_server.url).hset(key, field, b"short")
    t0 = time.perf_counter()
    r = store.read("user", ids.tolist())
    assert time.perf_counter() - t0 < 1.0
    assert r.found.sum() == 63 and not r.found[5] and r.n_malformed == 1
    np.testing.assert_allclose(r.vectors[6:], vecs[6:], rtol=1e-3, atol=1e-3)
    store.close()
