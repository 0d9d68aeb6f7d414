"""The vectorised read path: float16 decoding, bucket-order decoding, RESP packing, the local hash
index. Each is checked against the plain (slower) computation it replaces."""

from __future__ import annotations

import time

import hiredis
import numpy as np
import pytest

from feature_store.online import EntityBatch, open_store
from feature_store.online.codec import Layout, decode_values, encode, f16_to_f32, split_records
from feature_store.online.redis_store import pack_hmget
from llm4msr.config import StoreConfig


def test_f16_to_f32_is_exact_for_every_bit_pattern() -> None:
    every = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).reshape(256, 256)
    got, finite = f16_to_f32(every)
    want = every.astype(np.float32)
    ok = np.isfinite(every)
    assert got.dtype == np.float32 and got.shape == (256, 256)
    np.testing.assert_array_equal(got[ok], want[ok])  # subnormals included
    assert np.array_equal(np.signbit(got[ok]), np.signbit(want[ok]))  # -0.0 keeps its sign
    assert finite.tolist() == ok.all(axis=1).tolist()
    strided = encode(Layout("v", 256, "float16"), want[:4].clip(-1, 1), np.zeros(4))["vec"]
    np.testing.assert_array_equal(f16_to_f32(strided)[0], want[:4].clip(-1, 1))  # a record field view


@pytest.mark.parametrize("damage", ["none", "absent", "short", "malformed"])
def test_decode_values_in_bucket_order_equals_request_order(damage: str) -> None:
    layout = Layout("v1", 8, "float16")
    rng = np.random.default_rng(3)
    n = 50
    now = int(time.time())
    gen = np.full(n, now)
    gen[7] = now - 1000  # stale with max_age 100
    values: list[bytes | None] = list(
        split_records(encode(layout, rng.normal(size=(n, 8)).astype(np.float32), gen))
    )
    if damage == "absent":
        values[3] = None
    elif damage == "short":
        values[4] = values[4][:-2]
    elif damage == "malformed":
        values[5] = b"XX" + values[5][2:]
    want = decode_values(layout, values, 100, now)
    order = rng.permutation(n)  # values[k] belongs to request row order[k]
    inv = np.argsort(order)
    got = decode_values(layout, [values[i] for i in order], 100, now, order)
    assert inv.tolist() != list(range(n))
    np.testing.assert_array_equal(got.vectors, want.vectors)
    assert got.found.tolist() == want.found.tolist()
    assert (got.missing, got.stale, got.malformed) == (want.missing, want.stale, want.malformed)
    assert want.stale == 1 and not want.found[7]
    assert want.missing + want.malformed == (0 if damage == "none" else 1)


@pytest.mark.parametrize(
    "fields",
    [["u00000001", "u00000002"], ["a", "bc"], ["é1", "é2"], [""], ["", ""], ["x" * 300] * 3, []],
)
def test_pack_hmget_matches_hiredis(fields: list[str]) -> None:
    assert pack_hmget("ns:h:v1:user:3", fields, hiredis.pack_command) == hiredis.pack_command(
        ("HMGET", "ns:h:v1:user:3", *fields)
    )


def test_local_hash_index_exact_matches_only(tmp_path) -> None:  # noqa: ANN001
    """Ids of mixed lengths and alphabets; queries that are prefixes, extensions or truncations of
    stored ids must not match (the hash is computed on ids cut to the index width)."""
    cfg = StoreConfig(pointer_cache_ms=0)
    ids = np.array(["a", "ab", "abc", "é", "éé", "zzzz", "u1", "u10", "u100"])
    vecs = np.arange(len(ids) * 4, dtype=np.float32).reshape(-1, 4)
    store = open_store(str(tmp_path / "online"), cfg)
    batch = EntityBatch(ids, vecs, np.full(len(ids), int(time.time())))
    store.write_version("v1", knowledge_family="f", snapshot_id="v1", entities={"user": batch})
    store.verify_version("v1", {"user": batch}, sample=len(ids))
    store.set_current("v1")
    q = ["u100", "abcd", "zzzzz", "éé", "u1000", "", "a", "é", "zzz", "u10"] * 5  # >= HASH_MIN_BATCH
    r = store.read("user", q)
    small = store.read("user", q[:10])  # below HASH_MIN_BATCH: the binary search path
    assert small.found.tolist() == r.found.tolist()[:10]
    np.testing.assert_array_equal(small.vectors, r.vectors[:10])
    assert r.found.tolist() == [True, False, False, True, False, False, True, True, False, True] * 5
    pos = {e: i for i, e in enumerate(ids.tolist())}
    for i in np.flatnonzero(r.found):
        np.testing.assert_array_equal(r.vectors[i], vecs[pos[q[i]]])
    assert r.n_missing == 25
    assert store._maps and all(m[2] is not None for m in store._maps.values())  # the index is in use
    store.close()


def test_malloc_tuning_applies_on_linux(tmp_path) -> None:  # noqa: ANN001
    """Opening a store keeps freed heap memory for reuse (no page faults per read); glibc only."""
    import sys

    from feature_store.online.base import tune_malloc

    open_store(str(tmp_path / "online"), StoreConfig()).close()
    assert tune_malloc() is sys.platform.startswith("linux")
