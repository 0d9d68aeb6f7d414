"""Redis Cluster specifics on a real 3-master cluster (the shared behaviour and fault suites run on
it through the `store_url` fixture): key placement, and a master killed mid-materialize."""

from __future__ import annotations

import time

import pytest

from feature_store.materialize import materialize
from feature_store.online import StoreError, open_store
from llm4msr.config import StoreConfig
from tests.fixtures.redis_server import all_keys
from tests.store.conftest import assert_values

CFG = StoreConfig(
    write_chunk=10,
    redis_bucket_fields=8,
    retries=1,
    backoff_ms=10,
    timeout_ms=500,
    write_timeout_ms=1000,
    pointer_cache_ms=0,
    verify_sample=100,
)


def test_cluster_layout_spreads_buckets_and_keeps_the_pointer_in_one_slot(
    redis_cluster, snapshot_factory
) -> None:  # noqa: ANN001
    snap, rows = snapshot_factory("v1", n_users=80, seed=1)
    materialize(snap, redis_cluster.url, CFG)
    store = open_store(redis_cluster.url, CFG)
    assert store.backend == "redis-cluster" and store.buckets("v1") == 10
    keys = all_keys(redis_cluster.url, "llm4msr:h:v1:user:*")
    assert len(keys) == 10
    assert len({redis_cluster.node_of(k) for k in keys}) > 1  # the version is spread over masters
    pointer = {redis_cluster.node_of(k) for k in ("{llm4msr}:current", "{llm4msr}:history")}
    assert len(pointer) == 1  # switch and rollback are one MULTI/EXEC on one master
    assert_values(store, rows, [f"u{i:05d}" for i in range(80)][::-1])
    store.close()


def test_master_killed_mid_materialize(fresh_cluster, snapshot_factory) -> None:  # noqa: ANN001
    """A master (not the pointer's) dies during the write of v2: the write fails with a StoreError
    and v1 stays current; the master comes back empty (no persistence), and the re-run notices the
    buckets it lost (their markers are gone) and writes v2 again, complete and verified."""
    url = fresh_cluster.url
    snap1, _ = snapshot_factory("v1", n_users=40, seed=1)
    snap2, rows2 = snapshot_factory("v2", n_users=80, seed=2)
    materialize(snap1, url, CFG)
    pointer_node = fresh_cluster.node_of("{llm4msr}:current")
    store = open_store(url, CFG)
    data_nodes = {fresh_cluster.node_of(store._bucket_key("v2", "user", b)) for b in range(10)}
    victim = next(i for i in sorted(data_nodes) if i != pointer_node)

    def kill(kind: str, chunk: int, n_chunks: int) -> None:
        if kind == "user" and chunk == 3:
            fresh_cluster.nodes[victim].stop()

    t0 = time.monotonic()
    with pytest.raises(StoreError, match="redis"):
        materialize(snap2, url, CFG, on_chunk=kill)
    assert time.monotonic() - t0 < 60
    t0 = time.monotonic()
    r = store.read("user", [f"u{i:05d}" for i in range(40)])  # never raises; errors read as missing
    assert time.monotonic() - t0 < 10 and r.n_found + r.n_errors == 40
    fresh_cluster.restart_node(victim)  # same slots, empty dataset
    assert store.current_id() == "v1"  # the pointer's master never went away
    report = materialize(snap2, url, CFG)
    assert report.keys_written + report.keys_skipped == 83
    assert store.current().version == "v2"
    assert_values(store, rows2, [f"u{i:05d}" for i in range(80)])
    assert store.incomplete_versions() == []
    store.close()


def test_cluster_down_before_materialize_gives_clear_error(fresh_cluster, snapshot_factory) -> None:  # noqa: ANN001
    snap, _ = snapshot_factory("v1", n_users=5)
    fresh_cluster.stop()
    t0 = time.monotonic()
    with pytest.raises(StoreError, match=r"redis at redis\+cluster://127\.0\.0\.1:\d+/0"):
        materialize(snap, fresh_cluster.url, CFG)
    assert time.monotonic() - t0 < 30


def test_cluster_write_connections_killed_midway_are_resent(redis_cluster, snapshot_factory) -> None:  # noqa: ANN001
    """Every master drops the writer's connections between chunks (CLIENT KILL): redis-py re-sends
    the chunk on fresh connections and the run completes without a resume, every value intact."""
    snap, rows = snapshot_factory("v1", n_users=80, seed=4)
    killed = []

    def kill(kind: str, chunk: int, n_chunks: int) -> None:
        if kind == "user" and chunk in (2, 5):
            killed.append(
                sum(n.client().client_kill_filter(_type="normal", skipme=True) for n in redis_cluster.nodes)
            )

    report = materialize(snap, redis_cluster.url, CFG, on_chunk=kill)
    assert len(killed) == 2 and all(n >= 1 for n in killed)
    assert report.keys_written == 83 and not report.resumed
    store = open_store(redis_cluster.url, CFG)
    assert store.current().version == "v1"
    assert_values(store, rows, [f"u{i:05d}" for i in range(80)])
    store.close()


def test_reads_fail_soft_while_a_master_hangs_and_recover(fresh_cluster, snapshot_factory) -> None:  # noqa: ANN001
    url = fresh_cluster.url
    snap, rows = snapshot_factory("v1", n_users=80, seed=5)
    materialize(snap, url, CFG)
    store = open_store(url, CFG)
    ids = [f"u{i:05d}" for i in range(80)]
    assert_values(store, rows, ids)
    info = store.current()
    victim = next(
        i
        for i in sorted({fresh_cluster.node_of(store._bucket_key("v1", "user", b)) for b in range(10)})
        if i != fresh_cluster.node_of("{llm4msr}:current")
    )
    fresh_cluster.nodes[victim].pause()  # hung master: keeps its port, answers nothing
    try:
        t0 = time.monotonic()
        r = store.read("user", ids, version=info)
        elapsed = time.monotonic() - t0
    finally:
        fresh_cluster.nodes[victim].resume()
    # redis-py's cluster pipeline re-sends a failed node's commands one by one: up to timeout_ms per
    # bucket of the hung master (docs/store.md), but bounded, and the read never raises
    buckets_on_victim = sum(
        fresh_cluster.node_of(store._bucket_key("v1", "user", b)) == victim for b in range(10)
    )
    assert r.n_errors > 0 and not r.found.any()
    assert elapsed < (buckets_on_victim + 3) * CFG.timeout_ms / 1000 + 2.0
    fresh_cluster.wait_ok()
    assert_values(store, rows, ids)  # same reader, same data
    store.close()
