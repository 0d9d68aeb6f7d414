"""A Redis server that restarts empty during a materialization (no persistence), the orphans such a
write used to leave, and `store status` / `store gc` for incomplete versions, on real servers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feature_store.materialize import materialize
from feature_store.online import open_store
from llm4msr.config import StoreConfig
from pipelines.cli import main
from tests.store.conftest import assert_values

CFG = StoreConfig(
    write_chunk=10, retries=3, backoff_ms=20, pointer_cache_ms=0, redis_bucket_fields=16, verify_sample=200
)


def test_redis_restart_mid_materialize_rewrites_the_version(redis_server, snapshot_factory) -> None:  # noqa: ANN001
    """The server restarts empty between two chunks; the writer's retry reaches the empty server.
    Before: it carried on without metadata and crashed with KeyError 'counts' (and so did every
    re-run). Now the lost metadata is noticed by the next chunk and the version is written again."""
    snap, rows = snapshot_factory("v1", n_users=80, seed=5)
    restarted = []

    def restart(kind: str, chunk: int, n_chunks: int) -> None:
        if kind == "user" and chunk == 2 and not restarted:
            restarted.append(True)
            redis_server.stop()
            redis_server.start()  # same port, empty dataset

    report = materialize(snap, redis_server.url, CFG, on_chunk=restart)
    assert restarted and report.restarts == 1
    assert report.keys_written == 83 and report.keys_skipped == 0  # the whole version, once more
    store = open_store(redis_server.url, CFG)
    assert store.current().version == "v1" and store.current().counts == {"scenario": 3, "user": 80}
    assert_values(store, rows, [f"u{i:05d}" for i in range(80)])
    assert store.incomplete_versions() == []
    # No orphan left behind: every data key is one of v1's buckets.
    keys = {k.decode() for k in redis_server.client().keys("llm4msr:h:*")}
    assert keys <= set(store._data_keys("v1", ["scenario", "user"], store.buckets("v1")))


def _leave_orphans(client, version: str, n: int, progress: bool = True) -> None:  # noqa: ANN001
    """What the writer used to leave after a restart: values, and a meta hash holding only
    `progress:user` (HSET created it in the chunk's transaction)."""
    client.hset(f"llm4msr:h:{version}:user:0", mapping={f"u{i:05d}": b"\x00" * 56 for i in range(n)})
    if progress:
        client.hset(f"llm4msr:meta:{version}", "progress:user", n)


def test_status_lists_orphans_rerun_recovers_gc_removes(
    redis_server, snapshot_factory, capsys: pytest.CaptureFixture
) -> None:  # noqa: ANN001
    url = redis_server.url
    snap1, _ = snapshot_factory("v1", n_users=20, seed=1)
    snap2, rows2 = snapshot_factory("v2", n_users=30, seed=2)
    materialize(snap1, url, CFG)
    client = redis_server.client()
    _leave_orphans(client, "v2", 25)  # damaged metadata (only a progress field)
    _leave_orphans(client, "v3", 40, progress=False)  # values without any metadata
    assert main(["store", "status", "--store", url, "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["current"]["version"] == "v1"
    incomplete = {v["version"]: v for v in st["incomplete"]}
    assert set(incomplete) == {"v2", "v3"}
    assert incomplete["v2"]["state"] == "damaged metadata" and incomplete["v2"]["entities"] == 25
    assert incomplete["v3"]["state"] == "no metadata" and incomplete["v3"]["entities"] == 40
    assert incomplete["v3"]["keys"] == 1 and incomplete["v3"]["bytes"] > 40 * 56
    assert main(["store", "status", "--store", url]) == 0
    text = capsys.readouterr().out
    assert "v3" in text and "no metadata" in text and "store gc" in text

    # Before: KeyError 'counts' on every re-run. Now the damaged version is rewritten cleanly.
    report = materialize(snap2, url, CFG)
    assert report.keys_written == 33 and not report.resumed
    store = open_store(url, CFG)
    assert store.current().version == "v2"
    assert_values(store, rows2, [f"u{i:05d}" for i in range(30)])

    # A partial write (status writing) is kept by default: a re-run would resume it.
    snap4, _ = snapshot_factory("v4", n_users=30, seed=4)

    def interrupt(kind: str, chunk: int, n_chunks: int) -> None:
        if kind == "user" and chunk == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        materialize(snap4, url, CFG, on_chunk=interrupt)
    assert main(["store", "gc", "--store", url, "--dry-run"]) == 0
    assert "would remove 1 incomplete version(s)" in capsys.readouterr().out
    assert client.exists("llm4msr:h:v3:user:0")
    assert main(["store", "gc", "--store", url, "--json"]) == 0
    removed = json.loads(capsys.readouterr().out)["removed"]
    assert [(v["version"], v["state"]) for v in removed] == [("v3", "no metadata")]
    assert not client.keys("llm4msr:h:v3:*")
    assert [v["version"] for v in store.incomplete_versions()] == ["v4"]
    assert main(["store", "gc", "--store", url, "--writing"]) == 0
    assert "removed 1 incomplete version(s)" in capsys.readouterr().out
    assert store.incomplete_versions() == [] and not client.keys("llm4msr:*:v4*")
    # Complete versions (current v2, previous v1 kept for rollback) are never touched.
    assert [v.version for v in store.list_versions()] == ["v1", "v2"]
    assert store.rollback() == "v1"


def test_gc_never_removes_the_current_version(redis_server, snapshot_factory) -> None:  # noqa: ANN001
    snap, _ = snapshot_factory("v1", n_users=10)
    materialize(snap, redis_server.url, CFG)
    client = redis_server.client()
    client.hdel("llm4msr:meta:v1", "counts")  # the current version's metadata damaged
    store = open_store(redis_server.url, CFG)
    [entry] = store.incomplete_versions()
    assert entry["version"] == "v1" and entry["current"] and entry["state"] == "damaged metadata"
    assert store.gc(include_writing=True) == []
    assert client.exists("llm4msr:h:v1:user:0")


def test_local_store_incomplete_and_gc(tmp_path: Path, snapshot_factory) -> None:  # noqa: ANN001
    url = str(tmp_path / "online")
    snap1, _ = snapshot_factory("v1", n_users=20, seed=1)
    snap2, rows2 = snapshot_factory("v2", n_users=30, seed=2)
    materialize(snap1, url, CFG)

    def interrupt(kind: str, chunk: int, n_chunks: int) -> None:
        if kind == "user" and chunk == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        materialize(snap2, url, CFG, on_chunk=interrupt)
    store = open_store(url, CFG)
    [entry] = store.incomplete_versions()
    assert entry["version"] == "v2" and entry["state"] == "writing" and entry["bytes"] > 0
    (Path(url) / "staging" / "v2" / "meta.json").write_text("{")  # damaged: not resumable
    [entry] = store.incomplete_versions()
    assert entry["state"] == "damaged metadata"
    assert store.status()["incomplete"] == [entry]
    report = materialize(snap2, store, CFG)  # rewritten from scratch, not resumed from damage
    assert report.keys_written == 33 and not report.resumed and store.current().version == "v2"
    assert_values(store, rows2, ["u00003", "u00029"])
    (Path(url) / "staging" / "v9").mkdir()  # a folder without metadata
    assert [v["version"] for v in store.gc()] == ["v9"]
    assert not (Path(url) / "staging" / "v9").exists() and store.incomplete_versions() == []
