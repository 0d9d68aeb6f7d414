"""Ids that become paths or keys (issue 12): `..` / `.` refused everywhere with nothing deleted,
recursive deletes confined to their folder, and the snapshot manifest covered by a checksum."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from feature_store.knowledge_snapshot import (
    MANIFEST_FILE,
    SnapshotError,
    knowledge_family,
    load_snapshot,
    read_manifest,
    write_snapshot_files,
)
from feature_store.materialize import materialize
from feature_store.offline_store import OfflineStore
from feature_store.online import EntityBatch, StoreError, open_store
from llm4msr.atomic import UnsafeDeleteError, remove_tree
from llm4msr.config import StoreConfig
from llm4msr.ids import InvalidIdError, check_id, is_valid_id
from tests.store.conftest import make_rows

BAD_IDS = [
    "..",
    ".",
    "",
    "...",
    ".hidden",
    "-rf",
    "a/b",
    "../x",
    "a\\b",
    "a b",
    "a:b",
    "a*",
    "é",
    "a\n",
    "x" * 129,
]


def test_id_rule() -> None:
    for good in ["v1", "20261126T101500123456Z", "m20261126T1Z", "a.b_c-d", "A" * 128, "0"]:
        assert is_valid_id(good) and check_id(good, "version") == good
    for bad in [*BAD_IDS, None, 5]:
        assert not is_valid_id(bad), bad
    with pytest.raises(
        InvalidIdError, match=r"^CURRENT: version '\.\.' is not valid: expected 1-128 characters"
    ):
        check_id("..", "version", "CURRENT")


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes: "nothing changed" means this is equal. The writer
    lock is left out: a refused write still takes it, and it records who holds it and since when."""
    from feature_store.online.local import LOCK_FILE

    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE
    }


def bad_snapshot(folder: Path, snapshot_id: str) -> Path:
    """A snapshot folder (not in an offline store, which would refuse the id) whose manifest says
    `snapshot_id`; its checksums, manifest checksum included, are all correct."""
    folder.mkdir(parents=True)
    meta = {
        "snapshot_id": snapshot_id,
        "model_id": "test-model",
        "pooling": "MEAN",
        "knowledge_family": knowledge_family("test-model", "MEAN", 16),
    }
    write_snapshot_files(folder, make_rows(20), meta, "float32")
    return folder


@pytest.fixture
def populated(store_url: str, snapshot_factory, tmp_path: Path):  # noqa: ANN001, ANN201
    """A store with v2 current, v1 in the history and v3 half-written (staging)."""
    cfg = StoreConfig(value_dtype="float32")
    for sid in ("v1", "v2"):
        materialize(snapshot_factory(sid, seed=int(sid[1:]))[0], store_url, cfg)
    store = open_store(store_url, cfg)
    rows = make_rows(30, seed=3)
    users = np.array([k == "user" for k in rows.kind])
    ids = np.asarray(rows.entity_id)[users]
    batch = EntityBatch(ids, rows.vectors[users], np.asarray(rows.generated_at)[users])
    store.write_version("v3", knowledge_family="f", snapshot_id="v3", entities={"user": batch})
    store.close()
    return cfg


def store_state(store_url: str, cfg: StoreConfig) -> object:
    if "://" not in store_url:
        return tree(Path(store_url))
    from tests.fixtures.redis_server import all_keys

    with open_store(store_url, cfg) as st:
        return all_keys(store_url), st.current_id(), st.history()


@pytest.mark.parametrize("bad", ["..", "."])
def test_dot_snapshot_ids_refused_and_nothing_deleted(
    store_url: str, populated, tmp_path: Path, bad: str
) -> None:  # noqa: ANN001
    cfg = populated
    before = store_state(store_url, cfg)
    snap = bad_snapshot(tmp_path / "bad", bad)
    with pytest.raises(
        SnapshotError, match=rf"manifest.json: key 'snapshot_id' '{bad}' is not valid: expected"
    ):
        materialize(snap, store_url, cfg)
    # The same manifest edited by hand after a good snapshot was written: the checksum catches it first.
    tampered = tmp_path / "tampered"
    shutil.copytree(bad_snapshot(tmp_path / "good", "v9"), tampered)
    manifest = json.loads((tampered / MANIFEST_FILE).read_text())
    (tampered / MANIFEST_FILE).write_text(json.dumps({**manifest, "snapshot_id": bad}))
    with pytest.raises(SnapshotError, match="the manifest was changed after the snapshot was written"):
        materialize(tampered, store_url, cfg)

    store = open_store(store_url, cfg)
    for call in (
        lambda: store.write_version(bad, knowledge_family="f", snapshot_id=bad, entities={}),
        lambda: store.drop_version(bad),
        lambda: store.set_current(bad),
        lambda: store.version_info(bad),
    ):
        with pytest.raises(ValueError, match=rf"version '{bad}' is not valid"):
            call()
    assert store_state(store_url, cfg) == before  # nothing deleted, nothing written
    cur = store.current()
    assert cur is not None and cur.version == "v2" and store.history() == ["v1"]
    assert [v.version for v in store.list_versions()] == ["v1", "v2", "v3"]
    store.close()
    if "://" not in store_url:
        root = Path(store_url)
        assert (root / "CURRENT").read_text() == "v2\n"
        assert (root / "versions" / "v1").is_dir() and (root / "versions" / "v2").is_dir()
        assert (root / "staging" / "v3" / "meta.json").is_file()


def test_bad_pointer_files_are_clear_errors(tmp_path: Path, snapshot_factory) -> None:  # noqa: ANN001
    online = tmp_path / "online"
    materialize(snapshot_factory("v1")[0], str(online), StoreConfig(value_dtype="float32"))
    before = tree(online)
    (online / "HISTORY").write_text("..\n")
    store = open_store(str(online), StoreConfig())
    with pytest.raises(StoreError, match=r"HISTORY: version '\.\.' is not valid"):
        store.rollback()
    (online / "CURRENT").write_text("..\n")
    with pytest.raises(StoreError, match=r"CURRENT: version '\.\.' is not valid"):
        store.current()
    assert store.read("user", ["u00001"]).n_errors == 1  # the request path still does not raise
    assert tree(online).keys() == before.keys()

    offline = OfflineStore(tmp_path / "offline")
    (offline.root / "CURRENT").write_text("../online\n")
    with pytest.raises(SnapshotError, match=r"CURRENT: version id '\.\./online' is not valid"):
        offline.current_id()
    (offline.root / "HISTORY").write_text("v1\n..\n")
    with pytest.raises(SnapshotError, match=r"HISTORY: version id '\.\.' is not valid"):
        offline.rollback()
    for bad in ("..", "."):
        with pytest.raises(SnapshotError, match="version id"):
            offline.set_current(bad)
        with pytest.raises(SnapshotError, match="version id"), offline.new_version(bad):
            pass
    assert offline.list_versions() == ["v1"] and tree(online).keys() == before.keys()


def test_redis_namespace_checked() -> None:
    with pytest.raises(InvalidIdError, match=r"store.namespace 'llm4msr\*' is not valid"):
        open_store("redis://127.0.0.1:1/0", StoreConfig(namespace="llm4msr*"))


def test_remove_tree_only_strictly_inside(tmp_path: Path) -> None:
    parent, outside = tmp_path / "versions", tmp_path / "outside"
    (parent / "v1").mkdir(parents=True)
    (parent / "v1" / "f").write_text("x")
    outside.mkdir()
    (outside / "keep").write_text("keep")
    (parent / "link").symlink_to(outside, target_is_directory=True)
    for target in (parent / "..", parent / ".", parent, parent / "link", outside, Path("/")):
        with pytest.raises(
            UnsafeDeleteError, match="refusing to delete .* expected a folder strictly inside"
        ):
            remove_tree(target, parent)
    assert (outside / "keep").read_text() == "keep" and (parent / "v1" / "f").is_file()
    remove_tree(parent / "v1", parent)
    remove_tree(parent / "never-existed", parent)  # nothing to delete is fine
    assert not (parent / "v1").exists() and (parent / "link").is_symlink()

    # Retention goes through the guard: a version folder that is a link to elsewhere is not followed.
    offline = OfflineStore(tmp_path / "offline")
    offline.versions_dir.mkdir(parents=True)
    (offline.versions_dir / "a-link").symlink_to(outside, target_is_directory=True)
    (outside / MANIFEST_FILE).write_text("{}")
    with pytest.raises(UnsafeDeleteError):
        offline.retain(0)
    assert (outside / "keep").read_text() == "keep"


def test_manifest_checksum_written_verified_and_legacy(snapshot_factory, tmp_path: Path, caplog) -> None:  # noqa: ANN001
    snap, _ = snapshot_factory("v1")
    side = snap / "manifest.sha256"
    assert side.is_file()
    out = subprocess.run(["sha256sum", "-c", side.name], cwd=snap, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr  # the standard tool agrees
    assert read_manifest(snap)["snapshot_id"] == "v1"

    copy = tmp_path / "copy"
    shutil.copytree(snap, copy)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest["knowledge_family"] = "someone-else"
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    for load in (read_manifest, load_snapshot, lambda p: materialize(p, str(tmp_path / "online"))):
        with pytest.raises(SnapshotError, match=r"copy/manifest.json: sha256 \w+… != manifest.sha256 \w+…"):
            load(copy)
    assert not (tmp_path / "online").exists()
    side_copy = copy / "manifest.sha256"
    side_copy.write_text("not a digest\n")
    with pytest.raises(SnapshotError, match="manifest.sha256: 'not' is not a sha256 digest"):
        read_manifest(copy)

    # A snapshot written before manifest checksums: accepted with one warning, the id still checked.
    side_copy.unlink()
    with caplog.at_level(logging.WARNING, logger="feature_store.knowledge_snapshot"):
        assert read_manifest(copy)["knowledge_family"] == "someone-else"
        read_manifest(copy)
    assert sum("no manifest.sha256" in r.getMessage() for r in caplog.records) == 1
    (copy / MANIFEST_FILE).write_text(json.dumps({**manifest, "snapshot_id": ".."}))
    with pytest.raises(SnapshotError, match="key 'snapshot_id' '..' is not valid"):
        read_manifest(copy)


def test_offline_store_seals_after_the_writers_last_edit(tmp_path: Path) -> None:
    """A writer that edits the manifest after write_snapshot_files (as the knowledge runner does)
    still publishes a valid seal; a manifest naming another id is never published."""
    store = OfflineStore(tmp_path / "offline")
    meta = {"model_id": "m", "pooling": "MEAN", "knowledge_family": knowledge_family("m", "MEAN", 16)}
    with store.new_version("v1") as (sid, tmp):
        out = write_snapshot_files(tmp, make_rows(5), {**meta, "snapshot_id": sid}, "float32")
        (tmp / MANIFEST_FILE).write_text(json.dumps({**out, "extra": 1}))
    assert load_snapshot(store.path_of("v1")).manifest["extra"] == 1
    wrong_id = pytest.raises(SnapshotError, match=r"key 'snapshot_id' is 'v1', expected 'v2'")
    with wrong_id, store.new_version("v2") as (_, tmp):
        write_snapshot_files(tmp, make_rows(5), {**meta, "snapshot_id": "v1"}, "float32")
    with pytest.raises(SnapshotError, match="is not a knowledge snapshot"), store.new_version("v3"):
        pass
    assert store.list_versions() == ["v1"]
