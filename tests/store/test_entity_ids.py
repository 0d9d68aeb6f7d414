"""Entity ids a store cannot hold exactly are refused when a snapshot is materialized (before: numpy
dropped the trailing NUL of "u00001\\0" and a null id became the text "None")."""

from __future__ import annotations

import pytest

from feature_store.knowledge_snapshot import SnapshotError
from feature_store.materialize import materialize
from feature_store.online import open_store
from llm4msr.config import StoreConfig
from tests.store.conftest import make_rows, write_snapshot


@pytest.mark.parametrize(("bad", "shown"), [("u00001\0", r"'u00001\\x00'"), (None, "None")])
def test_materialize_refuses_ids_it_cannot_store(store_url: str, tmp_path, bad, shown) -> None:  # noqa: ANN001
    rows = make_rows(4)
    rows.entity_id[4] = bad  # the second user
    snap = write_snapshot(tmp_path / "offline", rows, "v1")
    with pytest.raises(
        SnapshotError, match=rf"knowledge.parquet: column 'entity_id' of user row 1 is {shown}"
    ):
        materialize(snap, store_url, StoreConfig())
    store = open_store(store_url, StoreConfig())
    assert store.current() is None and store.version_info("v1") is None  # nothing written
