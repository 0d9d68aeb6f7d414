"""Faults against the real server: Redis down or hung during writes and reads, a materialization
killed with SIGKILL midway and re-run."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from feature_store.materialize import materialize
from feature_store.online import StoreError, open_store
from llm4msr.config import StoreConfig


def test_redis_down_before_materialize_gives_clear_error(redis_server, snapshot_factory) -> None:  # noqa: ANN001
    snap, _ = snapshot_factory("v1", n_users=5)
    redis_server.stop()
    t0 = time.monotonic()
    with pytest.raises(StoreError, match=r"redis at redis://127\.0\.0\.1:\d+/0 unreachable"):
        materialize(snap, redis_server.url, StoreConfig(retries=1, backoff_ms=10))
    assert time.monotonic() - t0 < 5


def test_redis_hung_during_materialize_keeps_previous_version(redis_server, snapshot_factory) -> None:  # noqa: ANN001
    cfg = StoreConfig(
        write_chunk=10, write_timeout_ms=300, timeout_ms=100, retries=1, backoff_ms=10, pointer_cache_ms=0
    )
    snap1, _ = snapshot_factory("v1", n_users=30, seed=1)
    snap2, rows2 = snapshot_factory("v2", n_users=80, seed=2)
    materialize(snap1, redis_server.url, cfg)

    def hang(kind: str, chunk: int, n_chunks: int) -> None:
        if kind == "user" and chunk == 2:
            redis_server.pause()

    try:
        with pytest.raises(StoreError, match="unreachable while writing version v2"):
            materialize(snap2, redis_server.url, cfg, on_chunk=hang)
    finally:
        redis_server.resume()
    store = open_store(redis_server.url, cfg)
    assert store.current().version == "v1" and store.version_info("v2").status == "writing"
    report = materialize(snap2, store, cfg)  # server back: the re-run resumes and completes
    assert report.resumed and store.current().version == "v2"
    r = store.read("user", [f"u{i:05d}" for i in range(80)])
    assert r.found.all()


def test_reads_return_missing_while_redis_is_down_and_recover(redis_server, snapshot_factory) -> None:  # noqa: ANN001
    cfg = StoreConfig(timeout_ms=100, pointer_cache_ms=0)
    snap, _ = snapshot_factory("v1", n_users=20)
    materialize(snap, redis_server.url, cfg)
    store = open_store(redis_server.url, cfg)
    ids = ["u00001", "u00002", "u00003"]
    assert store.read("user", ids).found.all()

    redis_server.pause()  # hung server: reads must come back within the timeout
    try:
        t0 = time.monotonic()
        r = store.read("user", ids)
        elapsed = time.monotonic() - t0
    finally:
        redis_server.resume()
    assert not r.found.any() and r.n_errors == 3 and elapsed < 1.0
    assert store.read("user", ids).found.all()  # recovers, same data

    redis_server.stop()  # crashed server: connection refused, fast
    t0 = time.monotonic()
    r = store.read("user", ids)
    assert not r.found.any() and r.n_errors == 3 and time.monotonic() - t0 < 1.0
    redis_server.start()  # comes back empty (no persistence); re-materialize, same reader recovers
    materialize(snap, redis_server.url, cfg)
    r = store.read("user", ids)
    assert r.found.all() and r.version == "v1"
    assert store.counters.as_dict()["errors"] == 6


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from feature_store.materialize import materialize
    from llm4msr.config import StoreConfig

    def die(kind, chunk, n_chunks):
        if kind == "user" and chunk == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)

    materialize(sys.argv[1], sys.argv[2], StoreConfig(write_chunk=10), on_chunk=die)
""")


def test_killed_materialization_resumes_to_same_result(
    store_url: str, snapshot_factory, tmp_path: Path
) -> None:  # noqa: ANN001
    snap, rows = snapshot_factory("v1", n_users=120, seed=3)
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(snap), store_url, "9"],
        capture_output=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    cfg = StoreConfig(write_chunk=10, pointer_cache_ms=0)
    store = open_store(store_url, cfg)
    assert store.current() is None and store.version_info("v1").status == "writing"
    report = materialize(snap, store, cfg)
    # local: progress durable every 8 chunks (scenario chunk + users 0..6); redis: every chunk
    assert report.resumed and report.keys_skipped >= 73 and report.keys_written + report.keys_skipped == 123
    ids = [f"u{i:05d}" for i in range(120)]
    r = store.read("user", ids)
    assert r.found.all()
    pos = {e: i for i, e in enumerate(rows.entity_id)}
    np.testing.assert_array_equal(
        r.vectors, rows.vectors[[pos[i] for i in ids]].astype(np.float16).astype(np.float32)
    )


def test_write_connection_killed_midway_is_resent(redis_server, snapshot_factory) -> None:  # noqa: ANN001
    """The write connection dies between chunks (CLIENT KILL): the unconfirmed chunks are re-sent on
    a fresh connection and the run completes without a resume, with every value intact."""
    cfg = StoreConfig(write_chunk=10, pointer_cache_ms=0, retries=2, backoff_ms=10, redis_bucket_fields=16)
    snap, rows = snapshot_factory("v1", n_users=80, seed=4)
    admin = redis_server.client()
    killed = []

    def kill(kind: str, chunk: int, n_chunks: int) -> None:
        if kind == "user" and chunk in (2, 5):
            killed.append(admin.client_kill_filter(_type="normal", skipme=True))

    report = materialize(snap, redis_server.url, cfg, on_chunk=kill)
    assert len(killed) == 2 and all(n >= 1 for n in killed)
    assert report.keys_written == 83 and report.keys_skipped == 0 and not report.resumed
    store = open_store(redis_server.url, cfg)
    ids = [f"u{i:05d}" for i in range(80)]
    r = store.read("user", ids)
    assert r.found.all() and r.version == "v1"
    pos = {e: i for i, e in enumerate(rows.entity_id)}
    np.testing.assert_array_equal(
        r.vectors, rows.vectors[[pos[i] for i in ids]].astype(np.float16).astype(np.float32)
    )
