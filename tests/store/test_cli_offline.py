"""`llm4msr store ...` end to end (in-process CLI) and the offline store's publish/retain/rollback/Feast export."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feature_store.knowledge_snapshot import SnapshotError
from feature_store.offline_store import OfflineStore
from pipelines.cli import main
from tests.store.conftest import make_rows, write_snapshot


def test_cli_materialize_status_rollback(
    store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "offline"
    write_snapshot(root, make_rows(12, seed=1), "v1")
    assert main(["store", "materialize", "--knowledge", str(root), "--store", store_url]) == 0
    assert "as version v1" in capsys.readouterr().out
    write_snapshot(root, make_rows(12, seed=2), "v2")
    assert (
        main(
            [
                "store",
                "materialize",
                "--knowledge",
                str(root / "versions" / "v2"),
                "--store",
                store_url,
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["version"] == "v2" and report["previous"] == "v1" and report["keys_written"] == 15
    assert main(["store", "materialize", "--knowledge", str(root), "--store", store_url]) == 0
    assert "already current" in capsys.readouterr().out
    assert main(["store", "status", "--store", store_url, "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert (
        st["current"]["version"] == "v2" and st["history"] == ["v1"] and st["current"]["counts"]["user"] == 12
    )
    assert main(["store", "status", "--store", store_url]) == 0
    assert "current:  v2" in capsys.readouterr().out
    assert main(["store", "rollback", "--store", store_url]) == 0
    assert "v2 -> v1" in capsys.readouterr().out
    assert main(["store", "rollback", "--store", store_url]) == 1
    assert "no previous version" in capsys.readouterr().err


def test_cli_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert (
        main(["store", "materialize", "--knowledge", str(tmp_path / "nope"), "--store", str(tmp_path / "s")])
        == 2
    )
    assert "neither a knowledge snapshot" in capsys.readouterr().err
    assert main(["store", "status", "--store", "ftp://x"]) == 2
    assert "unknown scheme" in capsys.readouterr().err
    assert main(["store", "snapshots", "--knowledge", str(tmp_path / "missing")]) == 2


def test_cli_redis_down_exit_code(redis_server, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:  # noqa: ANN001
    root = tmp_path / "offline"
    write_snapshot(root, make_rows(5), "v1")
    redis_server.stop()
    assert (
        main(
            [
                "store",
                "materialize",
                "--knowledge",
                str(root),
                "--store",
                redis_server.url,
                "--set",
                "store.retries=0",
            ]
        )
        == 1
    )
    assert "unreachable" in capsys.readouterr().err


def test_offline_snapshots_publish_retain_rollback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "offline"
    for i in range(4):
        write_snapshot(root, make_rows(6, seed=i), f"v{i}")
        time.sleep(0.01)
    store = OfflineStore(root)
    assert store.current_id() == "v3" and store.history() == ["v0", "v1", "v2"]
    assert main(["store", "snapshots", "--knowledge", str(root), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["current"] == "v3" and [v["id"] for v in listing["versions"]] == ["v0", "v1", "v2", "v3"]
    assert listing["versions"][0]["counts"] == {"scenario": 3, "user": 6}
    assert main(["store", "snapshots", "--knowledge", str(root), "--rollback"]) == 0
    assert "v3 -> v2" in capsys.readouterr().out and store.current_id() == "v2"
    assert (
        main(["store", "snapshots", "--knowledge", str(root), "--retain", "--set", "store.keep_versions=2"])
        == 0
    )
    assert store.list_versions() == ["v2", "v3"]  # newest two kept; the current one never deleted
    with pytest.raises(SnapshotError, match="no previous version"):
        store.rollback()  # v0, v1 were deleted: nothing to go back to


def test_feast_export_layout(tmp_path: Path) -> None:
    root = tmp_path / "offline"
    rows = make_rows(7, generated_at=1_700_000_000)
    write_snapshot(root, rows, "v1", dtype="float16")
    paths = OfflineStore(root).export_feast(tmp_path / "feast")
    users = pq.read_table(paths["user"])
    assert users.schema.field("user_id").type == pa.string()
    assert users.schema.field("event_timestamp").type == pa.timestamp("us", tz="UTC")
    assert users.schema.field("vector").type == pa.list_(pa.float32())
    assert users.num_rows == 7 and users.column("knowledge_version")[0].as_py() == "v1"
    assert users.column("event_timestamp")[0].as_py().timestamp() == 1_700_000_000
    assert len(users.column("vector")[0].as_py()) == 16
    assert pq.read_table(paths["scenario"]).column("scenario_id").to_pylist() == ["s0", "s1", "s2"]
