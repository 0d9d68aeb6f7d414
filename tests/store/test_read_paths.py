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


def _bulk(v: bytes | None) -> bytes:
    return b"$-1\r\n" if v is None else b"$%d\r\n%s\r\n" % (len(v), v)


def _replies(groups: list[list[bytes | None]]) -> bytes:
    return b"".join(b"*%d\r\n" % len(g) + b"".join(map(_bulk, g)) for g in groups)


def _serve(data: bytes, chunk: int):  # noqa: ANN202
    """A socket pair whose far end sends `data` in `chunk`-byte pieces from a thread, then idles."""
    import socket
    import threading

    ours, theirs = socket.socketpair()
    ours.settimeout(2.0)

    def send() -> None:
        for i in range(0, len(data), chunk):
            theirs.sendall(data[i : i + chunk])
            time.sleep(0.0005)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return ours, theirs, thread


VALUES = [bytes([65 + i]) * 12 for i in range(7)]
CASES = {
    "all present": [VALUES[:3], VALUES[3:]],
    "last value absent": [VALUES[:3], [*VALUES[3:6], None]],
    "first value absent": [[None, *VALUES[1:3]], VALUES[3:]],
    "a value of another length": [VALUES[:3], [VALUES[3], VALUES[4][:5], *VALUES[5:]]],
    "a longer value last": [VALUES[:3], [*VALUES[3:6], VALUES[6] * 2]],
}


@pytest.mark.parametrize("chunk", [1, 7, 4096])
@pytest.mark.parametrize("case", sorted(CASES))
def test_fixed_layout_reader_equals_hiredis_and_never_waits_past_the_reply(case: str, chunk: int) -> None:
    """Whatever the replies hold and however they are split into packets, read_values returns what
    hiredis parses, without waiting for bytes the server never sends (the socket would time out)."""
    from feature_store.online.resp_values import read_values

    groups = CASES[case]
    ours, theirs, thread = _serve(_replies(groups), chunk)
    t0 = time.perf_counter()
    views, replies = read_values(ours, [len(g) for g in groups], 12)
    assert time.perf_counter() - t0 < 1.5  # well inside the 2 s socket timeout
    if case == "all present":
        assert replies is None and views is not None
        assert [[bytes(x) for x in v] for v in views] == groups
    else:
        assert views is None and replies == groups
    thread.join()
    ours.setblocking(False)
    with pytest.raises(BlockingIOError):  # nothing of the replies was left unread
        ours.recv(1)
    ours.close()
    theirs.close()


def test_fixed_layout_reader_reports_error_replies_and_closed_connections() -> None:
    from feature_store.online.resp_values import ReplyError, read_values

    ours, theirs, thread = _serve(_replies([VALUES[:2]]) + b"-WRONGTYPE not a hash\r\n", 3)
    with pytest.raises(ReplyError, match="WRONGTYPE"):
        read_values(ours, [2, 2], 12)
    thread.join()
    ours.close()
    theirs.close()
    ours, theirs, thread = _serve(_replies([VALUES[:2]])[:20], 5)
    thread.join()
    theirs.close()
    with pytest.raises(ConnectionError):
        read_values(ours, [2], 12)
    ours.close()


def test_redis_reads_with_absent_and_odd_values_take_the_general_path(redis_server, tmp_path) -> None:  # noqa: ANN001
    """Against the real server: the last id of a bucket absent, or a value overwritten with another
    length, still reads right (found mask, vectors) and quickly."""
    import redis as redis_py

    from feature_store.online.redis_store import value_location

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
    key, field = value_location("rv", "v1", "user", "u0005", store.buckets("v1"))
    redis_py.Redis.from_url(redis_server.url).hset(key, field, b"short")
    t0 = time.perf_counter()
    r = store.read("user", ids.tolist())
    assert time.perf_counter() - t0 < 1.0
    assert r.found.sum() == 63 and not r.found[5] and r.n_malformed == 1
    np.testing.assert_allclose(r.vectors[6:], vecs[6:], rtol=1e-3, atol=1e-3)
    store.close()
