"""The shared versioned-folder mechanics behind the offline store and the model registry."""

from pathlib import Path

import pytest

from llm4msr.atomic import atomic_directory
from llm4msr.versioned import VersionedFolders


def _publish(store: VersionedFolders, vid: str) -> None:
    with atomic_directory(store.versions_dir / vid) as tmp:
        (tmp / store.marker).write_text("{}")


def test_switch_rollback_and_retain(tmp_path: Path):
    store = VersionedFolders(tmp_path)
    assert store.current_id() is None and store.list_versions() == []
    for vid in ("v1", "v2", "v3"):
        _publish(store, vid)
        store.set_current(vid)
    assert store.current_id() == "v3" and store.history() == ["v1", "v2"]
    assert store.rollback() == "v2" and store.current_id() == "v2"
    # keep the newest version (v3) and, always, the current one (v2)
    assert store.retain(1) == ["v1"]
    assert store.list_versions() == ["v2", "v3"]
    with pytest.raises(ValueError, match="no previous version"):
        store.rollback()


def test_incomplete_version_cannot_become_current(tmp_path: Path):
    store = VersionedFolders(tmp_path)
    (store.versions_dir / "half").mkdir(parents=True)  # no marker: an interrupted write
    with pytest.raises(ValueError, match="not found"):
        store.set_current("half")
    assert store.current_id() is None
